// Passing a type that is not a manager says so in plain words.
use websocket_manager::DynManager;

struct NotAManager;

fn serve(_manager: DynManager) {}

fn main() {
    serve(DynManager::new(NotAManager));
}
