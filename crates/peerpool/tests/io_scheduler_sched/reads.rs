//! Direct reads, caps switched mid-stream, and the scheduler's shutdown and drop.

use super::*;

#[tokio::test(start_paused = true)]
async fn uncapped_direct_reads_keep_order_and_are_counted() {
    let s = scheduler(IoSchedulerConfig::default());
    let (mut conn, remote) = pair(&s);
    let total = (1 << 20) + 7;
    let sender = send_pattern(remote, Some(total));
    let mut pos = 0;
    // Large reads go straight into the caller's buffer; small ones read a chunk and queue
    // the rest.
    let sizes = [64 * 1024, 1, 100, CHUNK as usize, 2, 70_000, 3];
    let got = read_pattern(&mut conn, &mut pos, u64::MAX, &sizes).await;
    assert_eq!(got, total);
    assert_eq!(sender.await.expect("sender"), total);
    assert_eq!(conn.read_queued(), 0);
    assert_eq!(conn.stat().total_recv, total, "direct reads are counted");
    assert_eq!(s.global_stat().total_recv, total);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(conn.stat().current_inflow > 0, "{:?}", conn.stat());
    assert!(s.global_stat().current_inflow > 0);
}

#[tokio::test(start_paused = true)]
async fn uncapped_reads_still_push_back_and_lose_nothing() {
    let queue = 64 * 1024;
    let s = scheduler(IoSchedulerConfig {
        read_queue_size: queue,
        ..IoSchedulerConfig::default()
    });
    let (mut conn, remote) = pair(&s);
    let total = 1 << 20;
    let sender = send_pattern(remote, Some(total));
    // Nobody reads: the remote fills the pipe and blocks; nothing beyond the queue bound
    // is taken from it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!sender.is_finished(), "the remote is pushed back");
    assert!(conn.read_queued() <= queue);
    assert!(conn.stat().total_recv <= queue as u64, "{:?}", conn.stat());
    let mut pos = 0;
    let got = read_pattern(&mut conn, &mut pos, u64::MAX, &[7, 64 * 1024, 100]).await;
    assert_eq!(got, total, "nothing dropped");
    assert_eq!(sender.await.expect("sender"), total);
    assert_eq!(conn.stat().total_recv, total);
}

#[tokio::test(start_paused = true)]
async fn a_cap_set_mid_stream_goes_back_through_the_scheduler_and_off_again() {
    let s = scheduler(IoSchedulerConfig::default());
    let (mut conn, remote) = pair(&s);
    let _sender = send_pattern(remote, None);
    let mut pos = 0;
    let sizes = [64 * 1024, 100];
    let limit = Duration::from_secs(30);

    // Uncapped: 4 MiB take no virtual time at all (a 32 KiB/s cap would need 2 minutes).
    let start = Instant::now();
    let fast = tokio::time::timeout(limit, read_pattern(&mut conn, &mut pos, 4 << 20, &sizes));
    assert_eq!(fast.await.expect("uncapped"), 4 << 20);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );

    // Capped mid-stream: from now on the scheduler's cap holds.
    let cap = 32 * KIB;
    conn.set_cap(None, Some(cap)).expect("open");
    let before = conn.stat().total_recv;
    let secs = 5;
    let deadline = Instant::now() + Duration::from_secs(secs);
    // Bounded in bytes too: if the cap did not apply, the loop would never let virtual
    // time move.
    let budget = 4 * cap * secs;
    let mut got = 0;
    while got < budget {
        let step = read_pattern(&mut conn, &mut pos, 64 * 1024, &sizes);
        match tokio::time::timeout_at(deadline, step).await {
            Ok(n) => got += n,
            Err(_) => break,
        }
    }
    let counted = conn.stat().total_recv - before;
    // Bucket of max(cap × 100 ms, 512 bytes), what the last small read queued, one chunk
    // in flight.
    let slack = cap / 10 + 2 * CHUNK;
    assert!(counted <= cap * secs + slack, "{counted}");
    assert!(counted >= cap * (secs - 1), "{counted}");
    assert!(got <= counted + CHUNK, "{got} read, {counted} counted");

    // Cap removed: straight back to full speed, in order.
    conn.set_cap(None, None).expect("open");
    let start = Instant::now();
    let fast = tokio::time::timeout(limit, read_pattern(&mut conn, &mut pos, 4 << 20, &sizes));
    assert_eq!(fast.await.expect("uncapped again"), 4 << 20);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        conn.stat().total_recv,
        pos + conn.read_queued() as u64,
        "every byte read is counted once"
    );
}

#[tokio::test(start_paused = true)]
async fn switching_caps_while_the_reader_waits_loses_no_wakeup() {
    let s = scheduler(IoSchedulerConfig::default());
    let (conn, mut remote) = pair(&s);
    let writer = conn.writer();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let reader = tokio::spawn(async move {
        let mut conn = conn;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return conn,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).await.is_err() {
                        return conn;
                    }
                }
            }
        }
    });
    // The consumer waits on the socket (direct read), then a cap comes on: the reader task
    // must take over the socket.
    tokio::time::sleep(Duration::from_millis(10)).await;
    writer.set_cap(None, Some(100 * KIB)).expect("open");
    remote.write_all(b"capped").await.expect("open");
    assert_eq!(
        within(rx.recv()).await.expect("delivered"),
        Some(b"capped".to_vec())
    );
    // Now the reader task waits on the socket; the cap goes: the consumer must take over.
    tokio::time::sleep(Duration::from_millis(10)).await;
    writer.set_cap(None, None).expect("open");
    remote.write_all(b"direct").await.expect("open");
    assert_eq!(
        within(rx.recv()).await.expect("delivered"),
        Some(b"direct".to_vec())
    );
    // And once more each way.
    writer.set_cap(None, Some(100 * KIB)).expect("open");
    remote.write_all(b"again").await.expect("open");
    assert_eq!(
        within(rx.recv()).await.expect("delivered"),
        Some(b"again".to_vec())
    );
    writer.set_cap(None, None).expect("open");
    drop(remote);
    assert_eq!(within(rx.recv()).await.expect("end"), None);
    let conn = reader.await.expect("reader");
    assert_eq!(conn.stat().total_recv, 17);
}

// ---- Tasks: every task of the scheduler is tracked and ends ----

#[tokio::test(start_paused = true)]
async fn shutdown_returns_once_every_task_has_ended() {
    let s = scheduler(IoSchedulerConfig {
        max_download_speed: Some(1024 * KIB),
        ..IoSchedulerConfig::default()
    });
    assert_eq!(s.live_tasks(), 1, "the dispatcher");
    let mut conns = Vec::new();
    let mut remotes = Vec::new();
    for _ in 0..5 {
        let (conn, remote) = pair(&s);
        conns.push(conn);
        remotes.push(remote);
    }
    assert_eq!(
        s.live_tasks(),
        1 + 2 * 5,
        "a reader and a writer per connection"
    );

    // Closed: flushed, then stopped; both its tasks have ended when `close` returns.
    let closed = conns.remove(0);
    let mut remote = remotes.remove(0);
    closed.write(vec![1; 1000]).await.expect("open");
    let delivered = tokio::spawn(async move {
        let mut got = Vec::new();
        remote.read_to_end(&mut got).await.map(|_| got)
    });
    closed.close(Duration::from_secs(5)).await;
    assert_eq!(s.live_tasks(), 1 + 2 * 4);
    assert_eq!(
        delivered.await.expect("task").expect("clean end"),
        vec![1; 1000]
    );

    // Dropped without close: cancelled; the remote sees the end of stream once the tasks
    // have dropped the stream's halves, and by then they no longer count.
    drop(conns.remove(0));
    let mut remote = remotes.remove(0);
    let mut got = Vec::new();
    let n = within(remote.read_to_end(&mut got))
        .await
        .expect("end of stream");
    assert_eq!(n.expect("clean end"), 0);
    assert_eq!(s.live_tasks(), 1 + 2 * 3);

    // Left for shutdown: one whose remote hung up, one whose remote reads nothing while a
    // large write is queued (its flush gives up at the timeout), one idle.
    drop(remotes.remove(0));
    conns[1].write(vec![2; 1 << 20]).await.expect("open");
    let start = Instant::now();
    within(s.shutdown(Duration::from_secs(2)))
        .await
        .expect("shutdown returns");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(s.live_tasks(), 0);
    assert!(s.connections().is_empty());
    within(s.tasks_ended()).await.expect("already ended");
    for conn in &conns {
        assert!(!conn.write_now(&b"x"[..]));
    }
    // The streams are dropped: the remote left reading sees the end after what was sent.
    let mut remote = remotes.remove(0);
    let mut got = Vec::new();
    remote.read_to_end(&mut got).await.expect("clean end");
    assert!(got.len() < 1 << 20 && got.iter().all(|b| *b == 2));
}

#[tokio::test(start_paused = true)]
async fn dropping_the_scheduler_without_shutdown_ends_its_dispatcher() {
    let s = scheduler(IoSchedulerConfig {
        max_download_speed: Some(KIB),
        ..IoSchedulerConfig::default()
    });
    assert_eq!(s.live_tasks(), 1);
    assert!(
        tokio::time::timeout(Duration::from_secs(5), s.tasks_ended())
            .await
            .is_err(),
        "the dispatcher runs while the scheduler lives"
    );
    let ended = s.tasks_ended();
    drop(s);
    within(ended).await.expect("the dispatcher has ended");
}

#[tokio::test(start_paused = true)]
async fn dropping_the_scheduler_without_shutdown_ends_every_connection_task() {
    let s = scheduler(IoSchedulerConfig::default());
    let (conn, mut remote) = pair(&s);
    let (capped, _capped_remote) = pair(&s);
    capped.set_cap(None, Some(KIB)).expect("open");
    assert_eq!(s.live_tasks(), 5);
    let ended = s.tasks_ended();
    drop(s);
    within(ended)
        .await
        .expect("the dispatcher and the connections' tasks end");
    // The connections were cancelled: streams dropped, nothing more accepted.
    let mut got = Vec::new();
    assert_eq!(remote.read_to_end(&mut got).await.expect("clean end"), 0);
    assert!(!conn.write_now(&b"x"[..]));
    assert!(!capped.write_now(&b"x"[..]));
}

// ---- Budget: the read queues count against a node-wide budget of bytes ----
