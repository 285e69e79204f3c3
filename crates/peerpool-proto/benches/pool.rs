//! Pool benchmarks with a baseline measured in the same run (STYLE.md): registering and
//! looking up 100 000 known points against a plain `HashMap`, and `list_known_points(50)`
//! out of 100 000 points against sampling 50 keys of a plain `Vec`.
#![allow(clippy::unwrap_used)] // benchmark set-up: a panic is the failure report

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use peerpool_proto::point::Point;
use peerpool_proto::pool::{Pool, PoolConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

const N: u32 = 100_000;

fn points() -> Vec<Point> {
    (0..N)
        .map(|i| Point::new(IpAddr::from((0x0a00_0000 | i).to_be_bytes()), 9732))
        .collect()
}

fn config() -> PoolConfig {
    PoolConfig {
        max_known_points: (200_000, 150_000),
        ..PoolConfig::default()
    }
}

fn now() -> peerpool_proto::pool::Time {
    peerpool_proto::pool::Time::from_secs(1_700_000_000)
}

fn filled_pool(points: &[Point]) -> Pool<()> {
    let mut pool = Pool::new(config(), &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
    for p in points {
        pool.register_point(now(), *p, None, None);
        while pool.poll_event().is_some() {}
    }
    pool
}

fn register(c: &mut Criterion) {
    let pts = points();
    let mut g = c.benchmark_group("register_100k_points");
    g.bench_function("pool.register_point", |b| {
        b.iter_batched(
            || Pool::<()>::new(config(), &mut ChaCha8Rng::seed_from_u64(1)).unwrap(),
            |mut pool| {
                for p in &pts {
                    pool.register_point(now(), *p, None, None);
                    // The runtime drains the outbox; without this it would cap at 1024.
                    while pool.poll_event().is_some() {}
                }
                pool
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("baseline HashMap<Point, u64>::insert", |b| {
        b.iter_batched(
            HashMap::<Point, u64>::new,
            |mut m| {
                for p in &pts {
                    m.insert(*p, 0);
                }
                m
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

// `get(..).is_some()` on purpose: the same operation as `Pool::point(..).is_some()`.
#[allow(clippy::unnecessary_get_then_check)]
fn lookup(c: &mut Criterion) {
    let pts = points();
    let pool = filled_pool(&pts);
    let map: HashMap<Point, u64> = pts.iter().map(|p| (*p, 0)).collect();
    let mut g = c.benchmark_group("lookup_100k_points");
    g.bench_function("pool.point", |b| {
        b.iter(|| {
            let mut n = 0;
            for p in &pts {
                n += usize::from(pool.point(black_box(p)).is_some());
            }
            n
        })
    });
    g.bench_function("baseline HashMap<Point, u64>::get", |b| {
        b.iter(|| {
            let mut n = 0;
            for p in &pts {
                n += usize::from(map.get(black_box(p)).is_some());
            }
            n
        })
    });
    g.finish();
}

fn list(c: &mut Criterion) {
    let pts = points();
    let pool = filled_pool(&pts);
    let map: HashMap<Point, u64> = pts.iter().map(|p| (*p, 0)).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut g = c.benchmark_group("list_known_points_50_of_100k");
    g.bench_function("pool.list_known_points", |b| {
        b.iter(|| pool.list_known_points(false, 50, &mut rng))
    });
    g.bench_function("baseline collect keys + sample 50", |b| {
        b.iter(|| {
            let keys: Vec<Point> = map.keys().copied().collect();
            rand::seq::index::sample(&mut rng, keys.len(), 50)
                .into_iter()
                .map(|i| keys[i])
                .collect::<Vec<_>>()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = register, lookup, list
}
criterion_main!(benches);
