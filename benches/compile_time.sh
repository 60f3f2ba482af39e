#!/usr/bin/env bash
# Compile time of #[websocket_manager]: 50 annotated managers against two
# baselines, in generated crates sharing one target dir (so the
# dependencies are built once and only the crate under test is timed):
#   plain        the same 50 impls of the same trait without the attribute
#                (the marker impl it adds written by hand): the attribute's
#                whole cost (expansion, registration);
#   by-hand      plain plus, written by hand, the registration the
#                attribute generates: the cost of the expansion alone;
#   async-trait  the same 50 impls written the way such a contract was
#                written before native async traits: a local copy of the
#                trait under #[async_trait], and #[async_trait] on each impl.
#
#   benches/compile_time.sh [pairs]      (default 3 pairs)
#   CLOCK=cpu benches/compile_time.sh 5  (CPU time instead of wall time)
#
# Each pair times both crates back to back, alternating which goes first:
#   full        `cargo clean -p <crate>` then `cargo build`
#   incremental a touched lib.rs, then `cargo build` (incremental on)
# and prints each time and the annotated/plain ratio of the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
pairs=${1:-3}
n=50
work=target/compile-time
mkdir -p "$work"
# the workspace target dir: its dependencies are usually built already
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}

method_bodies() {
  cat <<'RS'
    async fn add_connection(&self, _connection: WebSocketConnection) -> Result<(), ManagerError> { Ok(()) }
    async fn remove_connection(&self, _connection_id: &ConnectionId) -> Option<WebSocketConnection> { None }
    fn get_connection(&self, _connection_id: &ConnectionId) -> Option<WebSocketConnection> { None }
    fn get_user_connections(&self, _user_id: &UserId) -> HashSet<ConnectionId> { HashSet::new() }
    fn is_connection_active(&self, _user_id: &UserId) -> bool { false }
    fn get_connection_id_by_websocket(&self, _websocket: &WebSocketHandle) -> Option<ConnectionId> { None }
    fn update_connection_thread(&self, _connection_id: &ConnectionId, _thread_id: ThreadId) -> bool { false }
    async fn send_to_user(&self, _user_id: &UserId, _message: serde_json::Value) -> Result<Delivery, ManagerError> { Ok(Delivery::queued(0)) }
    async fn emit_critical_event(&self, _user_id: &UserId, _event_type: &str, _data: serde_json::Value) -> Result<Delivery, ManagerError> { Ok(Delivery::queued(0)) }
    fn get_connection_health(&self, user_id: &UserId) -> ConnectionHealth { ConnectionHealth::empty(user_id.clone()) }
    async fn send_to_thread(&self, _thread_id: &ThreadId, _message: serde_json::Value) -> Result<Delivery, ManagerError> { Ok(Delivery::queued(0)) }
RS
}

registration() { # index: what the attribute generates for Manager<index>
  cat <<RS
const _: () = {
    ::core::assert!(::websocket_manager::PROTOCOL_FINGERPRINT == ::websocket_manager::PROTOCOL_FINGERPRINT, "same contract");
    fn __assert_manager<T: ::websocket_manager::WebSocketManager>() {}
    let _ = __assert_manager::<Manager$1>;
    ::websocket_manager::__private::inventory::submit! {
        ::websocket_manager::Registration::new("manager-$1", "Manager$1", ::websocket_manager::ManagerMode::Unified, ::core::option::Option::None)
            .at(::core::module_path!(), ::core::file!(), ::core::line!())
            .with_fingerprint(::websocket_manager::PROTOCOL_FINGERPRINT)
    }
};
RS
}

generate() { # kind
  local kind=$1 dir=$work/$1
  mkdir -p "$dir/src"
  cat > "$dir/Cargo.toml" <<TOML
[package]
name = "compile-time-$kind"
version = "0.0.0"
edition = "2024"
publish = false

[dependencies]
websocket-manager = { path = "$root/runtime" }
async-trait = "0.1.80"

[workspace]
TOML
  {
    echo '#![allow(dead_code)]'
    echo 'use std::collections::HashSet;'
    echo 'use websocket_manager::*;'
    if [ "$kind" = async-trait ]; then
      # the contract's signatures, as an async-trait trait of this crate
      echo '#[async_trait::async_trait]'
      echo 'pub trait Contract: Send + Sync + '"'"'static {'
      method_bodies | sed -E 's/ \{ .* \}$/;/'
      echo '}'
    fi
    for i in $(seq 1 $n); do
      echo "pub struct Manager$i;"
      case $kind in
        annotated)
          echo "#[websocket_manager(name = \"manager-$i\", factory = false)]"
          echo "impl WebSocketManager for Manager$i {" ;;
        plain)
          echo "impl websocket_manager::__private::Annotated for Manager$i {}"
          echo "impl WebSocketManager for Manager$i {" ;;
        by-hand)
          registration "$i"
          echo "impl websocket_manager::__private::Annotated for Manager$i {}"
          echo "impl WebSocketManager for Manager$i {" ;;
        async-trait)
          echo "#[async_trait::async_trait]"
          echo "impl Contract for Manager$i {" ;;
      esac
      method_bodies
      echo "}"
    done
  } > "$dir/src/lib.rs"
}

seconds() { # command...: wall seconds, or with CLOCK=cpu user+system CPU
  # seconds of the build's processes (steadier on a machine other builds share)
  local TIMEFORMAT
  if [ "${CLOCK:-wall}" = cpu ]; then TIMEFORMAT='%3U %3S'; else TIMEFORMAT='%3R'; fi
  { time "$@" >/dev/null 2>&1; } 2>&1 | awk '{print $1 + ($2 ? $2 : 0)}'
}

kinds="annotated plain by-hand async-trait"
for kind in $kinds; do generate "$kind"; done
# warm the shared dependencies once
for kind in $kinds; do
  cargo build --quiet --manifest-path "$work/$kind/Cargo.toml"
done

declare -A full incremental
for pair in $(seq 1 "$pairs"); do
  if (( pair % 2 )); then order="annotated plain by-hand async-trait"; else order="async-trait by-hand plain annotated"; fi
  for kind in $order; do
    manifest=$work/$kind/Cargo.toml
    cargo clean --quiet --manifest-path "$manifest" -p "compile-time-$kind"
    full[$kind]+="$(seconds cargo build --manifest-path "$manifest") "
    touch "$work/$kind/src/lib.rs"
    incremental[$kind]+="$(seconds cargo build --manifest-path "$manifest") "
  done
done

median() { tr ' ' '\n' | sed '/^$/d' | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
for measure in full incremental; do
  declare -n times=$measure
  a=$(echo "${times[annotated]}" | median)
  printf '%-12s annotated   %6.2fs [%s]\n' "$measure" "$a" "${times[annotated]% }"
  for base in plain by-hand async-trait; do
    b=$(echo "${times[$base]}" | median)
    printf '%-12s %-11s %6.2fs [%s]  annotated/%s %.2fx\n' \
      "" "$base" "$b" "${times[$base]% }" "$base" "$(echo "$a / $b" | bc -l)"
  done
done
