// The attribute goes on an impl block, not on a function.
use websocket_manager::websocket_manager;

#[websocket_manager]
fn build_manager() {}

fn main() {
    build_manager();
}
