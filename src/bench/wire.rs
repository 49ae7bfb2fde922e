//! [`Wire`]: the load loops' HTTP client, one keep-alive HTTP/1.1
//! connection driven by hyper directly.
//!
//! The load generator runs in the server's process, on the server's cores,
//! and pgbench (the reference of `bench commands`) brings a lean C client.
//! reqwest's general machinery (URL parsing and IDNA, a pooled client,
//! boxed layers) showed as about a quarter of the process's CPU samples under
//! `bench commands`; every cycle the client spends is one the server under
//! test does not get. A loop owns its connection, as a pgbench client does,
//! so nothing is shared or looked up per request.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// An answer slower than this is a failure (the loop goes on, on a new
/// connection), so a stuck server ends the run with errors, not a hang.
const TIMEOUT: Duration = Duration::from_secs(30);

/// One connection; reopened after a transport error.
pub(super) struct Wire {
    addr: SocketAddr,
    host: HeaderValue,
    sender: Option<SendRequest<Full<Bytes>>>,
}

/// A request: its method, the path from the server's root, a bearer token
/// and a JSON body.
pub(super) struct Call<'a> {
    pub(super) method: Method,
    pub(super) path: &'a str,
    pub(super) token: Option<&'a str>,
    pub(super) json: Option<Vec<u8>>,
}

impl Wire {
    pub(super) fn new(addr: SocketAddr) -> Self {
        let host = HeaderValue::from_str(&addr.to_string()).expect("an address is a valid header");
        Self {
            addr,
            host,
            sender: None,
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
            self.sender = None;
        }
        outcome
    }

    async fn exchange(&mut self, call: Call<'_>) -> anyhow::Result<(StatusCode, Bytes)> {
        let sender = match &mut self.sender {
            Some(sender) => sender,
            None => self.sender.insert(open(self.addr).await?),
        };
        let mut request = Request::builder()
            .method(call.method)
            .uri(call.path)
            .header(HOST, self.host.clone());
        if let Some(token) = call.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match call.json {
            Some(json) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(json))
            }
            None => Full::new(Bytes::new()),
        };
        sender.ready().await?;
        let response = sender.send_request(request.body(body)?).await?;
        let status = response.status();
        // The body is part of the answer: reading it is inside the timing.
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

async fn open(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends when the sender is dropped or the server closes; a broken
        // connection shows to the caller as a failed send.
        let _ = connection.await;
    });
    Ok(sender)
}
