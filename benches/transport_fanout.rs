//! End-to-end fan-out over real sockets: `send_to_user` to a user with 1, 8
//! and 32 open tabs (tokio-tungstenite clients on 127.0.0.1, an axum server
//! with the transport and the unified manager), timed until every tab has
//! read the message. Measures the whole path: manager, queue, writer task,
//! loopback TCP, client decode. A last case sends bursts of 100 messages to
//! one tab.
#![allow(missing_docs, clippy::unwrap_used)]

use websocket_manager::DynManager;
use websocket_manager_test_support::bench as auth;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::StreamExt;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use websocket_manager::managers::UnifiedWebSocketManager;
use websocket_manager::transport::WebSocketService;
use websocket_manager::{UserId, WebSocketManager};

type Client = WebSocketStream<TcpStream>;

async fn server() -> (std::net::SocketAddr, Arc<UnifiedWebSocketManager>) {
    let manager = Arc::new(UnifiedWebSocketManager::default());
    let service = WebSocketService::builder(
        DynManager::from(Arc::clone(&manager)),
        auth::authenticator(),
    )
    .build();
    let app = axum::Router::new()
        .route(
            "/ws",
            axum::routing::get(websocket_manager::transport::axum::upgrade),
        )
        .with_state(service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        websocket_manager::transport::axum::serve(listener, app)
            .await
            .unwrap()
    });
    (addr, manager)
}

async fn tab(addr: std::net::SocketAddr, user: &str) -> Client {
    let request = auth::upgrade_request(addr, user);
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut client = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap()
        .0;
    // The `hello` frame comes first: the tab is registered once it is read.
    read_one(&mut client).await;
    client
}

async fn read_one(client: &mut Client) {
    loop {
        match client.next().await {
            Some(Ok(Message::Text(_))) => return,
            Some(Ok(_)) => continue,
            other => panic!("tab closed: {other:?}"),
        }
    }
}

fn fan_out(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (addr, manager) = runtime.block_on(server());
    let message = json!({
        "type": "agent_thinking",
        "data": {"run_id": "run-42", "step": 7, "text": "Looking up the three most recent invoices for this customer"},
    });
    let mut group = c.benchmark_group("transport_fan_out");
    group.measurement_time(Duration::from_secs(5));
    for tabs in [1usize, 8, 32] {
        let user_name = format!("user-{tabs}");
        let user = UserId::new(&user_name).unwrap();
        let mut clients: Vec<Client> = runtime.block_on(async {
            let mut clients = Vec::new();
            for _ in 0..tabs {
                clients.push(tab(addr, &user_name).await);
            }
            while manager.get_user_connections(&user).len() < tabs {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            clients
        });
        group.throughput(Throughput::Elements(tabs as u64));
        group.bench_function(
            BenchmarkId::new("send_to_user_until_all_tabs_read", tabs),
            |b| {
                b.iter_custom(|iters| {
                    runtime.block_on(async {
                        let start = Instant::now();
                        for _ in 0..iters {
                            manager.send_to_user(&user, message.clone()).await.unwrap();
                            for client in &mut clients {
                                read_one(client).await;
                            }
                        }
                        start.elapsed()
                    })
                });
            },
        );
    }
    // A burst: 100 messages to one tab, until the tab has read them all
    // (the writer batches what is already queued into one flush).
    let user_name = "burst-user";
    let user = UserId::new(user_name).unwrap();
    let mut client = runtime.block_on(async {
        let client = tab(addr, user_name).await;
        while manager.get_user_connections(&user).is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        client
    });
    group.throughput(Throughput::Elements(100));
    group.bench_function("burst_of_100_to_one_tab", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    for _ in 0..100 {
                        manager.send_to_user(&user, message.clone()).await.unwrap();
                    }
                    for _ in 0..100 {
                        read_one(&mut client).await;
                    }
                }
                start.elapsed()
            })
        });
    });
    group.finish();
}

criterion_group!(benches, fan_out);
criterion_main!(benches);
