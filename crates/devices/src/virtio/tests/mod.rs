mod blk;
mod fuzz;
mod net;
mod net_tap;
mod rng;
mod snapshot;
mod transport;
mod vsock;
