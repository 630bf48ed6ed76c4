//! A raw TCP server that misbehaves on purpose, for failure tests:
//!
//! - `reset`: accept, set `SO_LINGER` to 0 and drop: the peer sees a TCP RST.
//! - `hang`: accept and read forever without answering; the socket stays open
//!   until the peer closes it.
//! - `close`: read one HTTP request (headers, plus a `content-length` body),
//!   then close cleanly (FIN) without answering a byte.

use clap::ValueEnum;
use std::future::Future;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Most bytes `close` mode reads as "the request" before closing anyway.
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// How long `close` mode waits for the rest of a request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What the blackhole does with each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Reset,
    Hang,
    Close,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Reset => "reset",
            Mode::Hang => "hang",
            Mode::Close => "close",
        }
    }
}

/// Accepts connections until `shutdown` completes, handling each per `mode`.
pub async fn serve(
    listener: TcpListener,
    mode: Mode,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        eprintln!("blackhole: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                match mode {
                    Mode::Reset => reset(stream),
                    Mode::Hang => { tokio::spawn(hang(stream)); }
                    Mode::Close => { tokio::spawn(close(stream)); }
                }
            }
        }
    }
}

fn reset(stream: TcpStream) {
    if let Err(e) = stream.set_zero_linger() {
        eprintln!("blackhole: SO_LINGER failed: {e}");
    }
    drop(stream);
}

async fn hang(mut stream: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    // Read and discard until the peer closes (0) or errors.
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// Position just past the blank line ending the HTTP header block.
fn header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn content_length(head: &[u8]) -> usize {
    let text = String::from_utf8_lossy(head);
    text.split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// True once `buf` holds a full request: headers plus the announced body, or
/// (chunked) the terminating zero-size chunk.
fn request_complete(buf: &[u8]) -> bool {
    let Some(end) = header_end(buf) else {
        return false;
    };
    let head = buf.get(..end).unwrap_or_default();
    let chunked = String::from_utf8_lossy(head)
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    if chunked {
        buf.ends_with(b"0\r\n\r\n")
    } else {
        buf.len() >= end + content_length(head)
    }
}

async fn close(mut stream: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let read_request = async {
        while !request_complete(&buf) && buf.len() < MAX_REQUEST_BYTES {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            }
        }
        true
    };
    let got = tokio::time::timeout(READ_TIMEOUT, read_request)
        .await
        .unwrap_or(false);
    if !got {
        return;
    }
    // Clean close: send FIN, then drain whatever the peer still sends so the
    // kernel does not turn the close into a reset.
    let _ = stream.shutdown().await;
    let drain = async {
        while let Ok(n) = stream.read(&mut chunk).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(READ_TIMEOUT, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_framing() {
        assert!(!request_complete(b"GET / HTTP/1.1\r\nhost: x\r\n"));
        assert!(request_complete(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"));
        let partial = b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab";
        assert!(!request_complete(partial));
        assert!(request_complete(
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd"
        ));
        assert!(request_complete(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n"
        ));
    }
}
