// An empty impl: every contract method is listed, critical ones marked.
use websocket_manager::prelude::*;

struct MyManager;

#[websocket_manager(factory = false)]
impl WebSocketManager for MyManager {

}

fn main() {}
