//! [`Wire`]: the load loops' HTTP client, one keep-alive HTTP/1.1
//! connection that the loop itself writes requests to and reads answers
//! from.
//!
//! The load generator runs in the server's process, on the server's cores,
//! and pgbench (the reference of `bench commands`) brings a lean C client:
//! every cycle the client spends is one the server under test does not
//! get. reqwest's general machinery showed as about a quarter of the
//! process's CPU samples; hyper's client, which came next, still runs a
//! connection task beside each loop, so every request crossed two tasks
//! and two channels each way. Here a request is one `write` from the
//! loop's task and its answer the reads that follow, as in pgbench.
//!
//! It speaks what the gateway answers: a status line, headers and a body
//! of `Content-Length` bytes. Anything else (a chunked body, a malformed
//! head) is an error of the loop, counted and reported, never guessed at.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use reqwest::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An answer slower than this is a failure (the loop goes on, on a new
/// connection), so a stuck server ends the run with errors, not a hang.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Headers an answer may have; the gateway sends about a dozen.
const MAX_HEADERS: usize = 64;

/// One connection; reopened after a transport error or a `close`.
pub(super) struct Wire {
    addr: SocketAddr,
    host: String,
    stream: Option<TcpStream>,
    /// The request being written, kept to reuse its allocation.
    out: Vec<u8>,
    /// What has been read of the answer.
    input: Vec<u8>,
}

/// A request: its method, the path from the server's root, a bearer token
/// and a JSON body.
pub(super) struct Call<'a> {
    pub(super) method: Method,
    pub(super) path: &'a str,
    pub(super) token: Option<&'a str>,
    pub(super) json: Option<Vec<u8>>,
}

/// Where the body of a parsed answer lies in the input.
struct Head {
    status: StatusCode,
    body_start: usize,
    body_len: usize,
    close: bool,
}

impl Wire {
    pub(super) fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            host: addr.to_string(),
            stream: None,
            out: Vec::with_capacity(1024),
            input: Vec::with_capacity(4096),
        }
    }

    /// Sends `call` and reads the whole answer. `Err` is a transport
    /// failure (the connection is dropped and reopened on the next call).
    pub(super) async fn send(&mut self, call: Call<'_>) -> anyhow::Result<(StatusCode, Bytes)> {
        let outcome = match tokio::time::timeout(TIMEOUT, self.exchange(call)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(anyhow::anyhow!("no answer within {TIMEOUT:?}")),
        };
        if outcome.is_err() {
            self.stream = None;
        }
        outcome
    }

    async fn exchange(&mut self, call: Call<'_>) -> anyhow::Result<(StatusCode, Bytes)> {
        self.write_request(&call)?;
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => self.stream.insert(open(self.addr).await?),
        };
        stream.write_all(&self.out).await?;
        self.input.clear();
        let head = loop {
            if let Some(head) = parse_head(&self.input)? {
                break head;
            }
            read_more(stream, &mut self.input).await?;
        };
        let end = head.body_start + head.body_len;
        while self.input.len() < end {
            read_more(stream, &mut self.input).await?;
        }
        if self.input.len() > end {
            bail!("the server sent more than one answer");
        }
        let body = Bytes::copy_from_slice(&self.input[head.body_start..end]);
        if head.close {
            self.stream = None;
        }
        Ok((head.status, body))
    }

    fn write_request(&mut self, call: &Call<'_>) -> anyhow::Result<()> {
        let out = &mut self.out;
        out.clear();
        write!(
            out,
            "{} {} HTTP/1.1\r\nhost: {}\r\n",
            call.method, call.path, self.host
        )?;
        if let Some(token) = call.token {
            write!(out, "authorization: Bearer {token}\r\n")?;
        }
        match &call.json {
            Some(json) => {
                write!(
                    out,
                    "content-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    json.len()
                )?;
                out.extend_from_slice(json);
            }
            None => out.extend_from_slice(b"\r\n"),
        }
        Ok(())
    }
}

async fn open(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn read_more(stream: &mut TcpStream, input: &mut Vec<u8>) -> anyhow::Result<()> {
    input.reserve(4096);
    if stream.read_buf(input).await? == 0 {
        bail!("the server closed the connection mid-answer");
    }
    Ok(())
}

/// The answer's head, once `input` holds all of it.
fn parse_head(input: &[u8]) -> anyhow::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let body_start = match response.parse(input).context("a malformed answer")? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let status = StatusCode::from_u16(response.code.unwrap_or_default())?;
    let mut body_len = None;
    let mut close = false;
    for header in response.headers.iter() {
        let value = std::str::from_utf8(header.value).unwrap_or_default();
        if header.name.eq_ignore_ascii_case("content-length") {
            body_len = Some(value.trim().parse::<usize>()?);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("a {value} body: this client reads Content-Length bodies only");
        } else if header.name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    let Some(body_len) = body_len else {
        bail!("an answer without Content-Length");
    };
    Ok(Some(Head {
        status,
        body_start,
        body_len,
        close,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &[u8] =
        b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";

    #[test]
    fn a_head_is_read_once_it_is_whole() {
        assert!(parse_head(&ANSWER[..20]).unwrap().is_none());
        let head = parse_head(ANSWER).unwrap().expect("a whole head");
        assert_eq!(head.status, StatusCode::CREATED);
        assert_eq!(
            &ANSWER[head.body_start..head.body_start + head.body_len],
            b"{}"
        );
        assert!(!head.close);
    }

    #[test]
    fn chunked_or_unsized_answers_are_refused() {
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        assert!(parse_head(chunked).is_err());
        let unsized_answer = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n";
        assert!(parse_head(unsized_answer).is_err());
    }
}
