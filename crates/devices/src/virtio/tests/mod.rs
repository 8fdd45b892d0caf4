mod blk;
mod fuzz;
mod net;
mod net_tap;
mod rng;
mod transport;
mod vsock;
