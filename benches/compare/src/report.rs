//! The rounds, and the table: each stack's medians, the paired ratios, the goals of
//! issue 12 and how noisy the run was.

use crate::measure::{load_average, median, quantile, spread};
use crate::{lp, memory_in_child, pp, runtime, tcp, Args, MemoryOf, Stack};
use clap::ValueEnum;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use std::collections::BTreeMap;

/// The items of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Item {
    /// One connection's throughput and CPU per byte.
    Throughput,
    /// Sequential cycles.
    Sequential,
    /// Concurrent dialers.
    Concurrent,
    /// Memory per idle connection.
    Memory,
}

impl Item {
    pub const ALL: [Item; 4] = [
        Item::Throughput,
        Item::Sequential,
        Item::Concurrent,
        Item::Memory,
    ];
}

/// A figure of the table, with its unit and which way is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Metric {
    Throughput,
    CpuPerByte,
    Established,
    SequentialRate,
    ConcurrentRate,
    Memory,
    MemorySubstream,
}

impl Metric {
    fn label(self) -> &'static str {
        match self {
            Metric::Throughput => "throughput, 1 connection (MiB/s)",
            Metric::CpuPerByte => "CPU per byte, both ends (ns/B)",
            Metric::Established => "sequential: time to established, median (µs)",
            Metric::SequentialRate => "sequential: cycles per second",
            Metric::ConcurrentRate => "concurrent dialers: handshakes per second",
            Metric::Memory => "memory per idle connection, both ends (KiB)",
            Metric::MemorySubstream => "  … libp2p with one open substream (KiB)",
        }
    }

    /// The goal on peerpool / `against`, where issue 12 sets one: (against, at least?, ratio).
    fn goals(self) -> &'static [(Stack, bool, f64)] {
        match self {
            Metric::Throughput => &[(Stack::Libp2p, true, 2.0), (Stack::Tcp, true, 0.5)],
            Metric::Established => &[(Stack::Libp2p, false, 0.25)],
            Metric::ConcurrentRate => &[(Stack::Libp2p, true, 4.0), (Stack::Tcp, true, 0.5)],
            Metric::Memory => &[(Stack::Libp2p, false, 0.75)],
            _ => &[],
        }
    }
}

/// Every measure: per metric and stack, one value per round.
#[derive(Debug, Default)]
struct Results(BTreeMap<(Metric, usize), Vec<f64>>);

impl Results {
    fn push(&mut self, metric: Metric, stack: Stack, value: f64) {
        let s = Stack::ALL
            .iter()
            .position(|x| *x == stack)
            .expect("a stack");
        self.0.entry((metric, s)).or_default().push(value);
    }

    fn get(&self, metric: Metric, stack: Stack) -> &[f64] {
        let s = Stack::ALL
            .iter()
            .position(|x| *x == stack)
            .expect("a stack");
        self.0.get(&(metric, s)).map_or(&[], Vec::as_slice)
    }

    /// The median over rounds of peerpool's value divided by `against`'s in the same round.
    fn ratio(&self, metric: Metric, against: Stack) -> f64 {
        let (p, a) = (self.get(metric, Stack::Peerpool), self.get(metric, against));
        let pairs: Vec<f64> = p.iter().zip(a).map(|(p, a)| p / a).collect();
        median(&pairs)
    }
}

/// Runs every round and prints the table.
pub fn run(args: &Args, items: &[Item]) {
    let rt = runtime();
    let mut results = Results::default();
    let load_start = load_average();
    let stacks = if args.stacks.is_empty() {
        Stack::ALL.to_vec()
    } else {
        args.stacks.clone()
    };
    for round in 0..args.rounds {
        for &item in items {
            // A rotating order, so no stack always runs first or last.
            for i in 0..stacks.len() {
                let stack = stacks[(i + round) % stacks.len()];
                measure(args, &rt, item, stack, &mut results);
            }
            if item == Item::Memory && stacks.contains(&Stack::Libp2p) {
                let v = memory_in_child(MemoryOf::Libp2pSubstream, args.nodes);
                eprintln!(
                    "round {round} memory libp2p+substream {:.1} KiB",
                    v / 1024.0
                );
                results.push(Metric::MemorySubstream, Stack::Libp2p, v / 1024.0);
            }
        }
    }
    rt.shutdown_background();
    print_table(args, &results, load_start, load_average());
}

fn measure(args: &Args, rt: &tokio::runtime::Runtime, item: Item, stack: Stack, r: &mut Results) {
    match item {
        Item::Throughput => {
            let t = rt.block_on(async {
                match stack {
                    Stack::Tcp => tcp::throughput(args.bytes).await,
                    Stack::Peerpool => pp::throughput(args.bytes).await,
                    Stack::Libp2p => lp::throughput(args.bytes).await,
                }
            });
            let mibs = t.bytes as f64 / t.secs / (1u64 << 20) as f64;
            let ns = t.cpu_secs * 1e9 / t.bytes as f64;
            eprintln!("{stack:?} throughput {mibs:.0} MiB/s, {ns:.2} ns/B CPU");
            r.push(Metric::Throughput, stack, mibs);
            r.push(Metric::CpuPerByte, stack, ns);
        }
        Item::Sequential => {
            let c = rt.block_on(async {
                match stack {
                    Stack::Tcp => tcp::sequential(args.cycles).await,
                    Stack::Peerpool => pp::sequential(args.cycles).await,
                    Stack::Libp2p => lp::sequential(args.cycles).await,
                }
            });
            let us = median(&c.established) * 1e6;
            let rate = c.established.len() as f64 / c.secs;
            eprintln!(
                "{stack:?} sequential: established median {us:.1} µs (p90 {:.1}), {rate:.0} cycles/s",
                quantile(&c.established, 0.9) * 1e6
            );
            r.push(Metric::Established, stack, us);
            r.push(Metric::SequentialRate, stack, rate);
        }
        Item::Concurrent => {
            let c = rt.block_on(async {
                match stack {
                    Stack::Tcp => tcp::concurrent(args.dialers, args.each).await,
                    Stack::Peerpool => pp::concurrent(args.dialers, args.each).await,
                    Stack::Libp2p => lp::concurrent(args.dialers, args.each).await,
                }
            });
            let rate = c.cycles as f64 / c.secs;
            eprintln!(
                "{stack:?} concurrent ({} dialers): {rate:.0} handshakes/s",
                args.dialers
            );
            r.push(Metric::ConcurrentRate, stack, rate);
        }
        Item::Memory => {
            let of = match stack {
                Stack::Tcp => MemoryOf::Tcp,
                Stack::Peerpool => MemoryOf::Peerpool,
                Stack::Libp2p => MemoryOf::Libp2p,
            };
            let kib = memory_in_child(of, args.nodes) / 1024.0;
            eprintln!("{stack:?} memory {kib:.1} KiB per idle connection (both ends)");
            r.push(Metric::Memory, stack, kib);
        }
    }
}

fn print_table(args: &Args, r: &Results, load_start: f64, load_end: f64) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "figure (median of rounds)",
        "tcp",
        "peerpool",
        "libp2p",
        "peerpool / libp2p",
        "peerpool / tcp",
        "goal",
        "spread tcp / pp / lp",
    ]);
    let metrics: Vec<Metric> =
        r.0.keys()
            .map(|(m, _)| *m)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
    let cell = |v: &[f64]| {
        if v.is_empty() {
            "–".to_owned()
        } else {
            format!("{:.1}", median(v))
        }
    };
    for m in metrics {
        let (t, p, l) = (
            r.get(m, Stack::Tcp),
            r.get(m, Stack::Peerpool),
            r.get(m, Stack::Libp2p),
        );
        let ratio = |against: Stack| {
            let x = r.ratio(m, against);
            if x.is_nan() {
                "–".to_owned()
            } else {
                format!("{x:.2}")
            }
        };
        let goal = m
            .goals()
            .iter()
            .map(|&(against, at_least, g)| {
                let x = r.ratio(m, against);
                let met = if at_least { x >= g } else { x <= g };
                format!(
                    "{} {g} × {}: {}",
                    if at_least { "≥" } else { "≤" },
                    match against {
                        Stack::Libp2p => "libp2p",
                        Stack::Tcp => "tcp",
                        Stack::Peerpool => "peerpool",
                    },
                    if met { "met" } else { "MISSED" }
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let spreads = [t, p, l]
            .iter()
            .map(|v| {
                if v.len() < 2 {
                    "–".to_owned()
                } else {
                    format!("{:.0} %", 100.0 * spread(v))
                }
            })
            .collect::<Vec<_>>()
            .join(" / ");
        table.add_row(vec![
            m.label().to_owned(),
            cell(t),
            cell(p),
            cell(l),
            ratio(Stack::Libp2p),
            ratio(Stack::Tcp),
            goal,
            spreads,
        ]);
    }
    println!("{table}");
    println!(
        "{} rounds, stacks in rotating order; ratios are medians of per-round ratios; spread = \
         (max − min) / median over rounds. Load average {load_start:.2} at start, {load_end:.2} \
         at end ({} cores). Throughput {} MiB per stack and round; {} sequential cycles; {} \
         dialers × {} cycles; {} idle connections (a mesh of {} nodes).",
        args.rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.bytes >> 20,
        args.cycles,
        args.dialers,
        args.each,
        crate::mesh_connections(args.nodes),
        args.nodes
    );
}
