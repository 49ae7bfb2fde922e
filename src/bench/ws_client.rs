//! A small WebSocket client of Tandem's realtime protocol, for the
//! realtime benchmarks and the system tests (one client, one behaviour).

use std::time::Duration;

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the server sent.
#[derive(Debug)]
pub enum Incoming {
    Frame(Value),
    /// The server closed, with this close code (if it sent one).
    Closed(Option<u16>),
}

impl Incoming {
    /// The frame; panics on a close (for tests).
    pub fn frame(self) -> Value {
        match self {
            Incoming::Frame(v) => v,
            Incoming::Closed(code) => panic!("socket closed ({code:?}) where a frame was expected"),
        }
    }
}

pub struct WsClient {
    pub socket: Socket,
}

/// `ws://<addr>/api/v1/ws`.
pub fn url(addr: std::net::SocketAddr) -> String {
    format!("ws://{addr}/api/v1/ws")
}

impl WsClient {
    /// Opens the socket without authenticating; `origin` sets the header.
    pub async fn open(url: &str, origin: Option<&str>) -> anyhow::Result<Self> {
        let mut request = url.into_client_request()?;
        if let Some(origin) = origin {
            request.headers_mut().insert("origin", origin.parse()?);
        }
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        Ok(Self { socket })
    }

    /// Opens on a socket whose kernel receive buffer is tiny, so a client
    /// that stops reading backs the server up quickly (slow consumers).
    pub async fn open_small_buffer(
        addr: std::net::SocketAddr,
        token: &str,
    ) -> anyhow::Result<Self> {
        let tcp = tokio::net::TcpSocket::new_v4()?;
        tcp.set_recv_buffer_size(4096)?;
        let stream = tcp.connect(addr).await?;
        let config = WebSocketConfig::default().read_buffer_size(4096);
        let (socket, _) = tokio_tungstenite::client_async_with_config(
            url(addr),
            MaybeTlsStream::Plain(stream),
            Some(config),
        )
        .await?;
        let mut client = Self { socket };
        client.authenticate(token).await?;
        Ok(client)
    }

    /// Opens and authenticates with the first message.
    pub async fn connect(url: &str, token: &str) -> anyhow::Result<Self> {
        let mut client = Self::open(url, None).await?;
        client.authenticate(token).await?;
        Ok(client)
    }

    pub async fn authenticate(&mut self, token: &str) -> anyhow::Result<()> {
        self.send(&json!({"op": "auth", "token": token})).await?;
        let answer = self.recv().await?.frame();
        anyhow::ensure!(answer["op"] == "authenticated", "auth refused: {answer}");
        Ok(())
    }

    pub async fn send(&mut self, message: &Value) -> anyhow::Result<()> {
        self.socket
            .send(Message::Text(message.to_string().into()))
            .await?;
        Ok(())
    }

    /// Sends `text` as it is (for malformed input).
    pub async fn send_raw(&mut self, text: &str) -> anyhow::Result<()> {
        self.socket.send(Message::Text(text.into())).await?;
        Ok(())
    }

    pub async fn subscribe(&mut self, project: Uuid, since: Option<i64>) -> anyhow::Result<()> {
        let mut op = json!({"op": "subscribe", "project_id": project});
        if let Some(since) = since {
            op["since"] = since.into();
        }
        self.send(&op).await
    }

    /// The next text frame or the close, skipping pings and pongs.
    pub async fn recv(&mut self) -> anyhow::Result<Incoming> {
        loop {
            let Some(message) = self.socket.next().await else {
                return Ok(Incoming::Closed(None));
            };
            match message {
                Ok(Message::Text(text)) => {
                    return Ok(Incoming::Frame(serde_json::from_str(&text)?));
                }
                Ok(Message::Close(frame)) => {
                    return Ok(Incoming::Closed(frame.map(|f| u16::from(f.code))));
                }
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// [`Self::recv`] with a deadline; `None` when nothing came in time.
    pub async fn recv_within(&mut self, wait: Duration) -> anyhow::Result<Option<Incoming>> {
        match tokio::time::timeout(wait, self.recv()).await {
            Ok(incoming) => incoming.map(Some),
            Err(_) => Ok(None),
        }
    }
}
