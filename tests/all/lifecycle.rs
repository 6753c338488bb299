//! Process lifecycle: graceful shutdown on SIGTERM and SIGINT.

use http::StatusCode;
use nix::sys::signal::Signal;
use tokio::net::TcpStream;
use weir_tests::{DEADLINE, Upstream, Weir, http1_client, read_body};

use crate::config;

async fn shutdown_lets_in_flight_requests_finish(signal: Signal) {
    let upstream = Upstream::start("one").await;
    let mut weir = Weir::start(&config(&[upstream.addr], "")).await;

    let url = weir.url("/slow");
    let in_flight = tokio::spawn(async move {
        let response = http1_client()
            .get(url.parse().expect("uri"))
            .await
            .expect("in-flight response");
        (response.status(), read_body(response.into_body()).await)
    });
    upstream.wait_for_requests(1).await;

    weir.signal(signal);
    weir.wait_for_message("draining").await;
    // New connections are refused once the listener is closed.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while TcpStream::connect(weir.proxy).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "weir kept accepting after {signal}"
        );
        tokio::task::yield_now().await;
    }
    assert!(!in_flight.is_finished());

    upstream.release();
    let (status, body) = in_flight.await.expect("task");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "one slow done");
    let exit = weir.wait_exit().await;
    assert!(exit.success(), "weir exited with {exit:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_then_exits_zero() {
    shutdown_lets_in_flight_requests_finish(Signal::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_drains_then_exits_zero() {
    shutdown_lets_in_flight_requests_finish(Signal::SIGINT).await;
}
