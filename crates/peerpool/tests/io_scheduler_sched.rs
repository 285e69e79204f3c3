//! Scenario tests of the I/O scheduler over in-memory `tokio::io::duplex` streams, in
//! virtual time (`start_paused`): no real sleeps, no wall-clock assertions.

use peerpool::budget::ByteBudget;
use peerpool::io_scheduler::{
    IoScheduler, IoSchedulerConfig, IoSchedulerError, ScheduledConnection,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const KIB: u64 = 1024;
const CHUNK: u64 = 16 * KIB;

#[path = "io_scheduler_sched/budget.rs"]
mod budget;
#[path = "io_scheduler_sched/reads.rs"]
mod reads;

fn scheduler(config: IoSchedulerConfig) -> IoScheduler {
    IoScheduler::new(config).expect("valid config inside a runtime")
}

/// Registers one end of a fresh in-memory pipe; returns the scheduled end and the raw remote
/// end.
fn pair(s: &IoScheduler) -> (ScheduledConnection, DuplexStream) {
    let (local, remote) = tokio::io::duplex(64 * 1024);
    (s.register(local).expect("scheduler running"), remote)
}

/// The remote end sends forever (until the pipe breaks).
fn flood(mut remote: DuplexStream) -> JoinHandle<()> {
    tokio::spawn(async move {
        let buf = vec![0x5a; CHUNK as usize];
        while remote.write_all(&buf).await.is_ok() {}
    })
}

/// Reads the scheduled connection forever, counting bytes.
fn consume(mut conn: ScheduledConnection) -> (Arc<AtomicU64>, JoinHandle<ScheduledConnection>) {
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let task = tokio::spawn(async move {
        let mut buf = vec![0; 64 * 1024];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return conn,
                Ok(n) => {
                    c.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
    });
    (count, task)
}

/// Samples the scheduler's `total_recv` every `step` for `total`, as (time, bytes).
async fn sample_recv(s: &IoScheduler, step: Duration, total: Duration) -> Vec<(Duration, u64)> {
    let start = Instant::now();
    let mut out = vec![(Duration::ZERO, s.global_stat().total_recv)];
    while start.elapsed() < total {
        tokio::time::sleep(step).await;
        out.push((start.elapsed(), s.global_stat().total_recv));
    }
    out
}

#[tokio::test(start_paused = true)]
async fn bytes_round_trip_between_two_scheduled_ends() {
    let s = scheduler(IoSchedulerConfig::default());
    let (a, b) = tokio::io::duplex(1024);
    let a = s.register(a).expect("running");
    let mut b = s.register(b).expect("running");
    a.write(&b"hello, "[..]).await.expect("open");
    a.write(vec![b'w'; 5000]).await.expect("open");
    let mut got = vec![0; 5007];
    b.read_exact(&mut got).await.expect("all bytes arrive");
    assert_eq!(&got[..7], b"hello, ");
    assert!(got[7..].iter().all(|x| *x == b'w'));
    assert_eq!(a.stat().total_sent, 5007);
    assert_eq!(b.stat().total_recv, 5007);
    assert_eq!(s.global_stat().total_sent, 5007);
    assert_eq!(s.connections().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn global_cap_holds_over_every_window() {
    let cap = 200 * KIB;
    let s = scheduler(IoSchedulerConfig {
        max_download_speed: Some(cap),
        ..IoSchedulerConfig::default()
    });
    let mut consumers = Vec::new();
    for _ in 0..5 {
        let (conn, remote) = pair(&s);
        flood(remote);
        consumers.push(consume(conn));
    }
    let samples = sample_recv(&s, Duration::from_millis(50), Duration::from_secs(8)).await;
    // Burst: max(cap × 100 ms, one chunk).
    let burst = (cap / 10).max(CHUNK);
    for (i, (t0, b0)) in samples.iter().enumerate() {
        for (t1, b1) in &samples[i + 1..] {
            let allowed = cap as f64 * (*t1 - *t0).as_secs_f64() + burst as f64;
            assert!(
                (b1 - b0) as f64 <= allowed,
                "window {t0:?}..{t1:?}: {} bytes > {allowed}",
                b1 - b0
            );
        }
    }
    let (_, total) = samples[samples.len() - 1];
    assert!(
        total as f64 >= 0.95 * cap as f64 * 8.0,
        "cap is used: {total}"
    );
}

/// Runs `n` flooded download connections under a cap; applies `setup` to each; returns the
/// bytes each received between `warmup` and `warmup + measure`.
async fn download_shares(
    cap: u64,
    n: usize,
    setup: impl Fn(usize, &ScheduledConnection),
    warmup: Duration,
    measure: Duration,
) -> Vec<u64> {
    let s = scheduler(IoSchedulerConfig {
        max_download_speed: Some(cap),
        ..IoSchedulerConfig::default()
    });
    let mut counts = Vec::new();
    for i in 0..n {
        let (conn, remote) = pair(&s);
        setup(i, &conn);
        flood(remote);
        counts.push(consume(conn).0);
    }
    tokio::time::sleep(warmup).await;
    let before: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    tokio::time::sleep(measure).await;
    counts
        .iter()
        .zip(before)
        .map(|(c, b)| c.load(Ordering::Relaxed) - b)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn equal_demand_gets_equal_shares() {
    let got = download_shares(
        256 * KIB,
        6,
        |_, _| {},
        Duration::ZERO,
        Duration::from_secs(10),
    )
    .await;
    let mean = got.iter().sum::<u64>() as f64 / got.len() as f64;
    for g in &got {
        assert!((*g as f64 - mean).abs() <= 0.05 * mean, "{got:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn shares_are_proportional_to_weights() {
    let weights = [1u32, 2, 4];
    let got = download_shares(
        512 * KIB,
        3,
        |i, c| c.set_weight(weights[i]).expect("open"),
        Duration::from_secs(2),
        Duration::from_secs(10),
    )
    .await;
    for (i, w) in weights.iter().enumerate() {
        let ratio = got[i] as f64 / got[0] as f64;
        assert!(
            (ratio - f64::from(*w)).abs() <= 0.1 * f64::from(*w),
            "weights {weights:?} got {got:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn per_connection_cap_is_respected() {
    let conn_cap = 20 * KIB;
    let secs = 10;
    let got = download_shares(
        512 * KIB,
        3,
        |i, c| {
            if i == 0 {
                c.set_cap(None, Some(conn_cap)).expect("open");
            }
        },
        Duration::ZERO,
        Duration::from_secs(secs),
    )
    .await;
    // Its bucket holds max(cap × 100 ms, 512 bytes) and it has one read chunk in flight.
    assert!(got[0] <= conn_cap * secs + 4 * KIB, "{got:?}");
    assert!(got[0] >= conn_cap * (secs - 1), "{got:?}");
    // The others share the rest.
    assert!(
        got[1] + got[2] >= (512 * KIB - conn_cap) * (secs - 1),
        "{got:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_reader_does_not_slow_the_others() {
    let cap = 1024 * KIB;
    let queue = 64 * 1024;
    let s = scheduler(IoSchedulerConfig {
        max_download_speed: Some(cap),
        read_queue_size: queue,
        ..IoSchedulerConfig::default()
    });
    let (stuck, stuck_remote) = pair(&s);
    flood(stuck_remote);
    let (fast, fast_remote) = pair(&s);
    flood(fast_remote);
    let (count, _task) = consume(fast);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(stuck.read_queued() <= queue, "read queue is bounded");
    assert!(
        stuck.stat().total_recv <= queue as u64,
        "the stuck socket is not read"
    );
    let fast_bytes = count.load(Ordering::Relaxed);
    assert!(
        fast_bytes as f64 >= 0.9 * (5 * cap) as f64,
        "fast got {fast_bytes}"
    );
}

#[tokio::test(start_paused = true)]
async fn write_now_refuses_when_the_queue_is_full_and_write_waits() {
    let s = scheduler(IoSchedulerConfig {
        write_queue_size: 1000,
        ..IoSchedulerConfig::default()
    });
    // A 16-byte pipe the remote does not read: the writer task blocks on its first chunk.
    let (local, mut remote) = tokio::io::duplex(16);
    let conn = s.register(local).expect("running");
    assert!(conn.write_now(vec![1; 600]));
    tokio::time::sleep(Duration::from_millis(10)).await; // the writer takes it off the queue
    assert!(
        conn.write_now(vec![2; 600]),
        "an empty queue accepts any buffer"
    );
    assert!(!conn.write_now(vec![3; 600]), "600 + 600 ≥ 1000: refused");
    assert!(
        !conn.write_now(vec![3; 400]),
        "600 + 400 is not < 1000: refused"
    );
    assert!(conn.write_now(vec![3; 399]));
    assert_eq!(conn.writer().queued(), 999);

    // `write` waits; dropping it queues nothing (cancel-safe).
    let pending = tokio::time::timeout(Duration::from_secs(1), conn.write(vec![4; 100])).await;
    assert!(pending.is_err(), "write waits while the queue is full");
    assert_eq!(conn.writer().queued(), 999);

    // Once the remote reads, a waiting write goes through.
    let writer = conn.writer();
    let w = tokio::spawn(async move { writer.write(vec![5; 100]).await });
    let mut got = vec![0; 600 + 600 + 399 + 100];
    remote.read_exact(&mut got).await.expect("all bytes");
    assert!(w.await.expect("task").is_ok());
    assert_eq!(&got[1599..], &[5; 100][..]);
}

#[tokio::test(start_paused = true)]
async fn close_delivers_what_was_queued() {
    let s = scheduler(IoSchedulerConfig {
        max_upload_speed: Some(10 * KIB),
        ..IoSchedulerConfig::default()
    });
    let (conn, mut remote) = pair(&s);
    let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    conn.write(data.clone()).await.expect("open");
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        remote.read_to_end(&mut got).await.map(|_| got)
    });
    let start = Instant::now();
    conn.close(Duration::from_secs(60)).await;
    // 100 kB at 10 KiB/s takes about 9.8 s of virtual time.
    assert!(start.elapsed() >= Duration::from_secs(8));
    assert!(start.elapsed() < Duration::from_secs(60));
    let got = reader.await.expect("task").expect("clean end of stream");
    assert_eq!(got, data);
    assert!(matches!(
        conn.write(&b"late"[..]).await,
        Err(IoSchedulerError::Closed)
    ));
    assert!(!conn.write_now(&b"late"[..]));
    assert!(s.connections().is_empty());
}

#[tokio::test(start_paused = true)]
async fn close_gives_up_at_the_timeout() {
    let s = scheduler(IoSchedulerConfig {
        max_upload_speed: Some(10 * KIB),
        ..IoSchedulerConfig::default()
    });
    let (conn, mut remote) = pair(&s);
    conn.write(vec![7; 100_000]).await.expect("open");
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let _ = remote.read_to_end(&mut got).await;
        got.len()
    });
    let start = Instant::now();
    conn.close(Duration::from_secs(2)).await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let got = reader.await.expect("task");
    assert!(got > 0 && got < 100_000, "partial delivery: {got}");
}

#[tokio::test(start_paused = true)]
async fn shutdown_returns_when_every_connection_is_closed() {
    let s = scheduler(IoSchedulerConfig {
        max_upload_speed: Some(100 * KIB),
        ..IoSchedulerConfig::default()
    });
    let mut remotes = Vec::new();
    let mut conns = Vec::new();
    for i in 0..5u8 {
        let (conn, mut remote) = pair(&s);
        conn.write(vec![i; 10_000]).await.expect("open");
        remotes.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let _ = remote.read_to_end(&mut got).await;
            got
        }));
        conns.push(conn);
    }
    s.shutdown(Duration::from_secs(5)).await;
    assert!(s.connections().is_empty());
    assert!(matches!(
        s.register(tokio::io::duplex(8).0),
        Err(IoSchedulerError::Shutdown)
    ));
    for (i, r) in remotes.into_iter().enumerate() {
        assert_eq!(
            r.await.expect("task"),
            vec![i as u8; 10_000],
            "flushed then closed"
        );
    }
    for c in &conns {
        assert!(!c.write_now(&b"x"[..]));
    }
}

#[tokio::test(start_paused = true)]
async fn statistics_follow_the_traffic() {
    let cap = 100 * KIB;
    let s = scheduler(IoSchedulerConfig {
        max_download_speed: Some(cap),
        ..IoSchedulerConfig::default()
    });
    let (conn, remote) = pair(&s);
    flood(remote);
    let (count, _task) = consume(conn);
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let info = s.connections();
    assert_eq!(info.len(), 1);
    let stat = info[0].stat;
    assert_eq!(stat.total_recv, count.load(Ordering::Relaxed));
    // After 10 refreshes the average is within (1 − 0.8^10) ≈ 89 % of the rate, ± burst.
    let inflow = f64::from(stat.current_inflow);
    assert!(
        inflow > 0.8 * cap as f64 && inflow < 1.1 * cap as f64,
        "{stat:?}"
    );
    assert_eq!(s.global_stat().current_inflow, stat.current_inflow);
    assert!(s.ma_state().refreshes >= 10);
    let json = serde_json::to_value(stat).expect("serialise");
    assert!(json["total_recv"].is_string() && json["current_inflow"].is_number());
}

#[tokio::test(start_paused = true)]
async fn remote_close_ends_the_read_side_after_the_queued_bytes() {
    let s = scheduler(IoSchedulerConfig::default());
    let (mut conn, mut remote) = pair(&s);
    remote.write_all(b"last words").await.expect("open");
    drop(remote);
    let mut got = Vec::new();
    conn.read_to_end(&mut got).await.expect("clean end");
    assert_eq!(got, b"last words");
}

#[tokio::test]
async fn invalid_configs_are_refused() {
    let bad = [
        IoSchedulerConfig {
            read_buffer_size: 0,
            ..IoSchedulerConfig::default()
        },
        IoSchedulerConfig {
            max_upload_speed: Some(0),
            ..IoSchedulerConfig::default()
        },
        IoSchedulerConfig {
            write_queue_size: 0,
            ..IoSchedulerConfig::default()
        },
    ];
    for c in bad {
        assert!(matches!(
            IoScheduler::new(c),
            Err(IoSchedulerError::InvalidConfig(_))
        ));
    }
    let s = scheduler(IoSchedulerConfig::default());
    let (conn, _remote) = pair(&s);
    assert!(matches!(conn.set_weight(0), Err(IoSchedulerError::Core(_))));
}

#[tokio::test(start_paused = true)]
async fn close_does_not_wait_for_a_dead_socket() {
    let s = scheduler(IoSchedulerConfig::default());
    let (conn, remote) = pair(&s);
    drop(remote);
    // Queued, but the writer fails on the broken pipe and cancels the connection.
    let _ = conn.write(vec![1; 1000]).await;
    let start = Instant::now();
    conn.close(Duration::from_secs(60)).await;
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert!(s.connections().is_empty());
}

#[tokio::test(start_paused = true)]
async fn dropping_the_connection_closes_the_stream() {
    let s = scheduler(IoSchedulerConfig::default());
    let (conn, mut remote) = pair(&s);
    drop(conn);
    let mut got = Vec::new();
    remote
        .read_to_end(&mut got)
        .await
        .expect("clean end of stream");
    assert!(got.is_empty());
    tokio::task::yield_now().await;
    assert!(s.connections().is_empty());
}

// ---- Direct reads (download not capped): the consumer reads the socket itself ----

/// `fut`, failing after 10 s (virtual) instead of hanging.
async fn within<T>(
    fut: impl std::future::Future<Output = T>,
) -> Result<T, tokio::time::error::Elapsed> {
    tokio::time::timeout(Duration::from_secs(10), fut).await
}

/// Byte `pos` of the test stream: a 251-periodic pattern, so a lost, doubled or reordered
/// piece shows.
fn pattern_byte(pos: u64) -> u8 {
    (pos % 251) as u8
}

/// The remote end sends the pattern, `total` bytes (then shuts down) or forever (`None`);
/// returns the bytes written.
fn send_pattern(mut remote: DuplexStream, total: Option<u64>) -> JoinHandle<u64> {
    tokio::spawn(async move {
        let mut pos = 0u64;
        let mut buf = vec![0u8; 10_007];
        while total.is_none_or(|t| pos < t) {
            let n = total.map_or(buf.len() as u64, |t| (t - pos).min(buf.len() as u64));
            for (i, b) in buf[..n as usize].iter_mut().enumerate() {
                *b = pattern_byte(pos + i as u64);
            }
            if remote.write_all(&buf[..n as usize]).await.is_err() {
                return pos;
            }
            pos += n;
        }
        let _ = remote.shutdown().await;
        pos
    })
}

/// Reads from `conn` with read sizes cycling through `sizes` until `want` bytes (or the end
/// of stream), checking the pattern from `*pos` on; returns the bytes read.
async fn read_pattern(
    conn: &mut ScheduledConnection,
    pos: &mut u64,
    want: u64,
    sizes: &[usize],
) -> u64 {
    let mut buf = vec![0u8; sizes.iter().copied().max().unwrap_or(1)];
    let mut got = 0;
    for size in sizes.iter().cycle() {
        if got >= want {
            break;
        }
        let size = (*size).min((want - got) as usize);
        let n = conn.read(&mut buf[..size]).await.expect("no error");
        if n == 0 {
            break;
        }
        for (i, b) in buf[..n].iter().enumerate() {
            assert_eq!(
                *b,
                pattern_byte(*pos + i as u64),
                "byte {}",
                *pos + i as u64
            );
        }
        *pos += n as u64;
        got += n as u64;
    }
    got
}
