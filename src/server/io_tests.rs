//! Tests for `io.rs`: paused Tokio time over in-memory duplex streams.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
use tokio::time::timeout;

const HEAD: Duration = Duration::from_secs(10);
const IDLE: Duration = Duration::from_secs(75);
const MS: Duration = Duration::from_millis(1);
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

type Io = TimedIo<DuplexStream>;

fn conn() -> (DuplexStream, Io, Arc<ConnActivity>) {
    let (client, server) = duplex(1024);
    let activity = Arc::new(ConnActivity::default());
    let timeouts = ConnTimeouts {
        header_read: HEAD,
        idle: IDLE,
    };
    (
        client,
        TimedIo::new(server, Arc::clone(&activity), timeouts),
        activity,
    )
}

/// Asserts that a read on `io` is still pending after `d` (paused time jumps there).
async fn assert_pending_for(io: &mut Io, d: Duration) {
    let res = timeout(d, io.read(&mut [0; 64])).await;
    assert!(res.is_err(), "read finished early: {res:?}");
}

/// Reads until the wrapper fails the read; returns its message and the time since `from`.
async fn read_timeout(io: &mut Io, from: Instant) -> (String, Duration) {
    match timeout(20 * IDLE, io.read(&mut [0; 64])).await {
        Err(_) => panic!("read still pending after {:?}", from.elapsed()),
        Ok(Err(e)) => {
            assert_eq!(e.kind(), io::ErrorKind::TimedOut);
            (e.to_string(), from.elapsed())
        }
        Ok(Ok(n)) => panic!("read {n} bytes instead of timing out"),
    }
}

fn assert_near(at: Duration, want: Duration) {
    assert!(
        at >= want && at < want + 10 * MS,
        "fired after {at:?}, want {want:?}"
    );
}

/// The client sends `bytes` and the wrapper reads exactly them.
async fn send(client: &mut DuplexStream, io: &mut Io, bytes: &[u8]) -> io::Result<()> {
    client.write_all(bytes).await?;
    let mut got = vec![0; bytes.len()];
    io.read_exact(&mut got).await?;
    assert_eq!(got, bytes);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn idle_connection_times_out_after_idle() -> io::Result<()> {
    let (mut client, mut io, _activity) = conn();
    let start = Instant::now();
    assert_pending_for(&mut io, IDLE - MS).await;
    let (msg, at) = read_timeout(&mut io, start).await;
    assert_eq!(msg, "idle timeout");
    assert_near(at, IDLE);
    // Writes never fail because of the wrapper.
    io.write_all(b"bye").await?;
    let mut got = [0; 3];
    client.read_exact(&mut got).await?;
    assert_eq!(&got, b"bye");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn partial_head_times_out_after_header_read() -> io::Result<()> {
    let (mut client, mut io, _activity) = conn();
    // The head clock starts with the first byte, not with the connection.
    assert_pending_for(&mut io, IDLE / 2).await;
    send(&mut client, &mut io, b"GET / HTTP/1.1\r\n").await?;
    let first_byte = Instant::now();
    // Dribbled header lines keep the connection alive but do not extend the head deadline.
    for _ in 0..3 {
        assert_pending_for(&mut io, Duration::from_secs(3)).await;
        send(&mut client, &mut io, b"X-Drip: 1\r\n").await?;
    }
    let (msg, at) = read_timeout(&mut io, first_byte).await;
    assert_eq!(msg, "header read timeout");
    assert_near(at, HEAD);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn nothing_times_out_while_a_request_is_in_flight() -> io::Result<()> {
    let (mut client, mut io, activity) = conn();
    send(&mut client, &mut io, REQUEST).await?;
    let _guard = activity.request_started();
    assert_eq!(activity.in_flight(), 1);
    assert_pending_for(&mut io, 10 * IDLE).await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn idle_clock_restarts_when_the_request_finishes() -> io::Result<()> {
    let (mut client, mut io, activity) = conn();
    send(&mut client, &mut io, REQUEST).await?;
    let guard = activity.request_started();
    assert_pending_for(&mut io, 2 * IDLE + HEAD).await;
    drop(guard);
    assert_eq!(activity.in_flight(), 0);
    let finished = Instant::now();
    assert_pending_for(&mut io, IDLE - MS).await;
    let (msg, at) = read_timeout(&mut io, finished).await;
    assert_eq!(msg, "idle timeout");
    assert_near(at, IDLE);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn idle_clock_starts_at_the_response_while_a_read_is_pending() -> io::Result<()> {
    // hyper keeps a read pending while it serves a request and may not poll it again after
    // writing the response; the idle clock must still start at the response.
    let (mut client, mut io, activity) = conn();
    send(&mut client, &mut io, REQUEST).await?;
    let guard = activity.request_started();
    let (mut reader, mut writer) = tokio::io::split(io);
    let read = tokio::spawn(async move { reader.read(&mut [0; 64]).await.map_err(|e| e.kind()) });
    tokio::task::yield_now().await; // the read is now pending, with the request in flight
    tokio::time::advance(HEAD / 2).await;
    drop(guard);
    writer.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await?;
    let responded = Instant::now();
    let res = read.await.map_err(io::Error::other)?;
    assert_eq!(res, Err(io::ErrorKind::TimedOut));
    assert_near(responded.elapsed(), IDLE);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn request_started_and_finished_between_polls_ends_the_head() -> io::Result<()> {
    // hyper may call the service, get a ready response and drop the guard before polling
    // the read again: the wrapper never sees `in_flight > 0`, but the head is complete.
    let (mut client, mut io, activity) = conn();
    send(&mut client, &mut io, REQUEST).await?;
    drop(activity.request_started());
    let finished = Instant::now();
    let (msg, at) = read_timeout(&mut io, finished).await;
    assert_eq!(msg, "idle timeout");
    assert_near(at, IDLE);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn timer_wakes_only_at_deadlines() -> io::Result<()> {
    let (mut client, mut io, activity) = conn();
    send(&mut client, &mut io, REQUEST).await?; // arms the timer for the head deadline
    drop(activity.request_started());
    let mut polls = 0;
    let res = std::future::poll_fn(|cx| {
        polls += 1;
        Pin::new(&mut io).poll_read(cx, &mut ReadBuf::new(&mut [0; 64]))
    })
    .await;
    assert!(res.is_err());
    // First poll, the wake-up at the stale head deadline (re-armed for idle), the timeout.
    assert_eq!(polls, 3);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn traffic_keeps_the_connection_alive() -> io::Result<()> {
    let (mut client, mut io, activity) = conn();
    let start = Instant::now();
    for _ in 0..4 {
        assert_pending_for(&mut io, IDLE - Duration::from_secs(1)).await;
        send(&mut client, &mut io, REQUEST).await?;
        let guard = activity.request_started();
        assert_pending_for(&mut io, HEAD * 2).await; // a slow upstream
        io.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await?;
        drop(guard);
        client.read_exact(&mut [0; 27]).await?;
    }
    assert!(start.elapsed() > 4 * IDLE);
    let last = Instant::now();
    let (msg, at) = read_timeout(&mut io, last).await;
    assert_eq!(msg, "idle timeout");
    assert_near(at, IDLE);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn bytes_pass_through_unchanged() -> io::Result<()> {
    let (mut client, mut io, _activity) = conn();
    io.write_all(b"hello").await?;
    io.flush().await?;
    let mut got = [0; 5];
    client.read_exact(&mut got).await?;
    assert_eq!(&got, b"hello");

    assert_eq!(io.is_write_vectored(), duplex(1).0.is_write_vectored());
    let n = io
        .write_vectored(&[IoSlice::new(b"ab"), IoSlice::new(b"cd")])
        .await?;
    let mut got = vec![0; n];
    client.read_exact(&mut got).await?;
    assert_eq!(got, &b"abcd"[..n]);

    send(&mut client, &mut io, b"world").await?;
    io.shutdown().await?;
    assert_eq!(client.read(&mut [0; 8]).await?, 0);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn http2_control_frames_between_requests_do_not_start_a_head_deadline() -> io::Result<()> {
    let (mut client, mut io, activity) = conn();
    send(&mut client, &mut io, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    drop(activity.request_started());
    // A PING-sized frame with no stream open: on HTTP/1 this would start the head clock.
    send(&mut client, &mut io, &[0, 0, 8, 6, 0, 0, 0, 0, 0]).await?;
    let last_bytes = Instant::now();
    assert_pending_for(&mut io, HEAD * 2).await;
    let (msg, at) = read_timeout(&mut io, last_bytes).await;
    assert_eq!(msg, "idle timeout");
    assert_near(at, IDLE);
    Ok(())
}

/// An HTTP/2 frame header: 24-bit length, type, flags, stream id.
fn frame_header(len: u32, kind: u8, stream: u32) -> Vec<u8> {
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.push(kind);
    out.push(0);
    out.extend_from_slice(&stream.to_be_bytes());
    out
}

#[tokio::test(start_paused = true)]
async fn http2_header_block_trickled_with_no_stream_open_times_out_after_header_read()
-> io::Result<()> {
    let (mut client, mut io, _activity) = conn();
    send(&mut client, &mut io, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    send(&mut client, &mut io, &frame_header(0, 0x4, 0)).await?; // SETTINGS: no head deadline
    assert_pending_for(&mut io, HEAD * 2).await;
    send(&mut client, &mut io, &frame_header(1000, 0x1, 1)).await?; // HEADERS, never finished
    let started = Instant::now();
    for _ in 0..3 {
        assert_pending_for(&mut io, Duration::from_secs(2)).await;
        send(&mut client, &mut io, b"x").await?; // a byte of the header block now and then
    }
    let (msg, at) = read_timeout(&mut io, started).await;
    assert_eq!(msg, "header read timeout");
    assert_near(at, HEAD);
    Ok(())
}

#[test]
fn http2_frame_headers_are_found_across_read_boundaries() {
    let mut stream = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    stream.extend(frame_header(6, 0x4, 0));
    stream.extend([0; 6]);
    stream.extend(frame_header(3, 0x1, 1));
    stream.extend([1, 2, 3]);
    stream.extend(frame_header(0, 0x6, 0));
    // Fed one byte at a time, the HEADERS frame is seen exactly once, at its header's last byte.
    let mut frames = H2Frames::new();
    let starts: Vec<usize> = (0..stream.len())
        .filter(|&i| frames.headers_started(&stream[i..=i]))
        .collect();
    assert_eq!(starts, [24 + 9 + 6 + 8]);
    // Fed whole, the same.
    assert!(H2Frames::new().headers_started(&stream));
    // A payload that looks like a HEADERS frame header is skipped as payload.
    let mut fake = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    fake.extend(frame_header(9, 0x0, 1));
    fake.extend(frame_header(0, 0x1, 3));
    assert!(!H2Frames::new().headers_started(&fake));
}
