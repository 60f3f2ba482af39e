// An impl of another trait is not a manager impl.
use std::fmt;
use websocket_manager::websocket_manager;

struct MyManager;

#[websocket_manager]
impl fmt::Display for MyManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("mine")
    }
}

fn main() {
    println!("{}", MyManager);
}
