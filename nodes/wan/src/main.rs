//! `ddnn-wan`: a userspace WAN link for the continuum drills (this kernel has no `tc netem`).
//! Listens on one address and forwards every connection to an upstream host:port, delaying
//! each chunk by a one-way delay (plus jitter) in both directions, so a request/response pair
//! costs two delays, as on a real link.

mod schedule;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use schedule::Schedule;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on, e.g. 0.0.0.0:9092.
    #[arg(long)]
    listen: SocketAddr,
    /// Where to forward, host:port (resolved at each new connection, so a restarted upstream
    /// with a new address is found).
    #[arg(long)]
    upstream: String,
    /// One-way delay, each direction (e.g. 20ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    delay: Duration,
    /// Uniform jitter around the delay (± this much, never reordering bytes).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0ms")]
    jitter: Duration,
    /// Name printed in the log lines.
    #[arg(long, default_value = "wan")]
    name: String,
}

/// Chunks in flight per direction before the reader waits (a bounded link buffer).
const LINK_CHUNKS: usize = 256;
const CHUNK: usize = 64 * 1024;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    eprintln!(
        "[{}] {} -> {} one-way delay {:?} jitter ±{:?}",
        args.name, args.listen, args.upstream, args.delay, args.jitter
    );
    let origin = Instant::now();
    let ids = AtomicU64::new(0);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (down, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => { eprintln!("[{}] accept: {e}", args.name); continue; }
                };
                let id = ids.fetch_add(1, Ordering::Relaxed);
                let args = Arc::clone(&args);
                tokio::spawn(async move {
                    if let Err(e) = relay(&args, down, origin, id).await {
                        eprintln!("[{}] connection {id} from {peer}: {e:#}", args.name);
                    }
                });
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = terminated() => return Ok(()),
        }
    }
}

async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

async fn relay(args: &Args, down: TcpStream, origin: Instant, id: u64) -> anyhow::Result<()> {
    let up = TcpStream::connect(&args.upstream).await.with_context(|| format!("connecting to {}", args.upstream))?;
    down.set_nodelay(true)?;
    up.set_nodelay(true)?;
    let (down_r, down_w) = down.into_split();
    let (up_r, up_w) = up.into_split();
    let seed = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ origin.elapsed().as_nanos() as u64;
    let there = direction(down_r, up_w, Schedule::new(args.delay, args.jitter, seed), origin);
    let back = direction(up_r, down_w, Schedule::new(args.delay, args.jitter, !seed), origin);
    // A clean close of one side is carried over and the other direction finishes on its own
    // (half-close); a failure of either ends both, as a dropped link would.
    tokio::pin!(there, back);
    tokio::select! {
        r = &mut there => { r?; back.await }
        r = &mut back => { r?; there.await }
    }
}

/// Copies one direction: a reader stamps each chunk with its due time, a writer sends it then.
async fn direction(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut schedule: Schedule,
    origin: Instant,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel::<(Duration, Vec<u8>)>(LINK_CHUNKS);
    let reader = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = from.read(&mut buf).await?;
            let due = schedule.due(origin.elapsed());
            // An empty chunk carries the close, delayed like the data before it.
            if tx.send((due, buf[..n].to_vec())).await.is_err() || n == 0 {
                return anyhow::Ok(());
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until((origin + due).into()).await;
            if chunk.is_empty() {
                to.shutdown().await?;
                return anyhow::Ok(());
            }
            to.write_all(&chunk).await?;
        }
        Ok(())
    };
    let (r, w) = tokio::join!(reader, writer);
    r.and(w)
}
