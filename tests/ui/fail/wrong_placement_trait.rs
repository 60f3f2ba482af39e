// The attribute goes on an impl block, not on a trait of your own.
use websocket_manager::websocket_manager;

#[websocket_manager]
trait MyManagerApi {
    fn ping(&self);
}

struct MyManager;

impl MyManagerApi for MyManager {
    fn ping(&self) {}
}

fn main() {
    MyManager.ping();
}
