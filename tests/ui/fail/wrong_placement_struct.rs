// The attribute goes on an impl block, not on the type.
use websocket_manager::websocket_manager;

#[websocket_manager]
struct MyManager;

fn main() {
    let _ = MyManager;
}
