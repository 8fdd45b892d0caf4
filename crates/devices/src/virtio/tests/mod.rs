mod blk;
mod fuzz;
mod rng;
mod transport;
mod vsock;
