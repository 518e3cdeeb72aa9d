"""HTTP and trigger adapters: decode the binding, call one service in `shared`, map the result."""
