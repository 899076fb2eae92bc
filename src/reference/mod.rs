//! The exact CPU reference of the VidKV math.
//!
//! The math the GPU kernels compute, written for clarity and used as the test oracle:
//! group quantizers ([`quantizers`]), the compact real DFT over key channels ([`rdft`]),
//! the outlier/normal channel split ([`split`]), semantic token protection ([`stp`]), the
//! (block-)Hadamard rotation ([`rotation`]) and Lloyd-Max row fit ([`lloyd_max`]) of the
//! rotated schemes, and dense attention, the ground truth ([`attention`]). This module is a leaf: it imports
//! only `config`, `error` and `tensor`, never `packed`, `gpu` or `cache`.

pub mod attention;
pub mod lloyd_max;
pub mod quantizers;
pub mod rdft;
pub mod rotation;
pub mod split;
pub mod stp;
