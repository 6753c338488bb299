//! The host's per-request building blocks, without sockets: routing over 1,000 routes, a
//! balancer pick per algorithm, and converting a request head between hyper's types and the
//! WIT records plugins see.
//!
//! Run: `cargo bench -p weir-host --bench core`.

use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Method, Request};
use weir::balancer::{self, Endpoints, PickContext};
use weir::plugin::view::RequestView;
use weir::router::Router;

/// A config with 1,000 routes over 100 hosts × 10 path prefixes, one cluster per balancing
/// algorithm, each with 8 endpoints, and round-robin, least-request and random clusters of
/// 100 endpoints.
fn config() -> weir::config::Config {
    let mut text = String::from("[[listeners]]\naddress = \"127.0.0.1:0\"\n");
    for lb in [
        "round_robin",
        "least_request",
        "random",
        "consistent_hash",
        "first",
    ] {
        let endpoints: Vec<String> = (0..8).map(|i| format!("\"10.0.0.{i}:80\"")).collect();
        text.push_str(&format!(
            "[[clusters]]\nname = \"{lb}\"\nlb = \"{lb}\"\nendpoints = [{}]\n",
            endpoints.join(", ")
        ));
    }
    // Large clusters: a pick that looks at each endpoint shows here.
    for lb in ["round_robin", "least_request", "random"] {
        let endpoints: Vec<String> = (0..100).map(|i| format!("\"10.0.1.{i}:80\"")).collect();
        text.push_str(&format!(
            "[[clusters]]\nname = \"{lb}_100\"\nlb = \"{lb}\"\nendpoints = [{}]\n",
            endpoints.join(", ")
        ));
    }
    for host in 0..100 {
        for prefix in 0..10 {
            text.push_str(&format!(
                "[[routes]]\nname = \"r{host}-{prefix}\"\nhost = \"api{host}.example.com\"\npath_prefix = \"/v{prefix}/\"\ncluster = \"round_robin\"\n"
            ));
        }
    }
    weir::config::parse(Path::new("bench.toml"), &text).expect("valid bench config")
}

fn benches(c: &mut Criterion) {
    let config = config();
    let router = Router::new(&config.routes);
    let mut group = c.benchmark_group("router");
    let request = |path: &str| {
        http::Request::builder()
            .method(Method::GET)
            .uri(path)
            .body(())
            .expect("request")
    };
    let (hit, miss) = (request("/v7/orders/42"), request("/x"));
    group.bench_function("1000_routes/hit", |b| {
        b.iter(|| router.route(Some("api57.example.com"), &hit))
    });
    group.bench_function("1000_routes/miss", |b| {
        b.iter(|| router.route(Some("nowhere.example.com"), &miss))
    });
    group.finish();

    let mut group = c.benchmark_group("balancer_pick");
    for cluster in &config.clusters {
        let balancer = balancer::build(cluster);
        let endpoints = Endpoints::new(cluster);
        let ctx = PickContext {
            hash: Some(balancer::hash("user-42")),
            tried: 0,
        };
        group.bench_function(cluster.name.as_str(), |b| {
            b.iter(|| balancer.pick(&ctx, &endpoints))
        });
    }
    group.finish();

    let (parts, ()) = Request::get("/api/orders/42?expand=items")
        .header("host", "api.example.com")
        .header("user-agent", "bench/1.0")
        .header("accept", "application/json")
        .header("accept-encoding", "gzip, br")
        .header("x-api-key", "alice-key")
        .header("x-request-id", "0d6f2a3c-bench")
        .body(())
        .expect("request")
        .into_parts();
    let host = parts.headers.get("host").cloned();
    let request = RequestView::new(
        parts,
        host,
        Arc::from("10.0.0.7:50412"),
        Arc::from("api"),
        &HeaderValue::from_static("0d6f2a3c-bench"),
        true,
    );
    // What a hook that takes the request whole (0.2.0, 0.1.0, body hooks) is given per call;
    // a 0.3.0 hook reads hyper's head through a handle instead.
    c.bench_function("headers/hyper_to_wit/request_head_6_headers", |b| {
        b.iter(|| request.record())
    });
}

criterion_group!(core_benches, benches);
criterion_main!(core_benches);
