// Passing a type that is not a manager says so in plain words.
use std::sync::Arc;
use websocket_manager::WebSocketManager;

struct NotAManager;

fn serve(_manager: Arc<dyn WebSocketManager>) {}

fn main() {
    serve(Arc::new(NotAManager));
}
