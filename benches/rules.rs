//! Micro-benchmarks of the two per-event rule operations: rendering a send (a reminder with
//! the Spanish date and time helpers) and matching a reply against 1, 100 and 1,000 reply
//! rules. `cargo bench --bench rules`; the load benchmark is `recuerda bench`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use recuerda::bench::fixtures;
use std::hint::black_box;

fn render_send(c: &mut Criterion) {
    let set = fixtures::rule_set(&fixtures::load_rules_yaml(0)).expect("bench rules load");
    let rule = set.rule(fixtures::CRON_RULE).expect("the cron rule");
    let send = fixtures::first_send(rule).expect("a send action");
    let ctx = fixtures::reminder_context(3);
    c.bench_function("render_send/reminder_990", |b| {
        b.iter(|| {
            set.render_send(rule, send, black_box(&ctx))
                .expect("renders")
        })
    });
}

fn match_reply(c: &mut Criterion) {
    let mut group = c.benchmark_group("match_reply");
    for n in [1usize, 100, 1000] {
        let set = fixtures::rule_set(&fixtures::reply_rules_yaml(n)).expect("bench rules load");
        let last = format!("clave{}", n - 1);
        group.bench_with_input(BenchmarkId::new("last_rule", n), &last, |b, text| {
            b.iter(|| {
                set.match_reply(Some("bench-1"), black_box(text), None)
                    .is_some()
            })
        });
        group.bench_with_input(
            BenchmarkId::new("no_match", n),
            "nada que ver",
            |b, text| {
                b.iter(|| {
                    set.match_reply(Some("bench-1"), black_box(text), None)
                        .is_some()
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, render_send, match_reply);
criterion_main!(benches);
