//! The exact CPU reference of the VidKV math.
//!
//! Everything the GPU kernels compute has its mirror here, written for clarity and used as
//! the test oracle: group quantizers ([`quantizers`]), the compact real DFT over key
//! channels ([`rdft`]), the outlier/normal channel split ([`split`]), semantic token
//! protection ([`stp`]) and attention, dense and straight from packed codes
//! ([`attention`]). This module never calls GPU code.

pub mod attention;
pub mod quantizers;
pub mod rdft;
pub mod split;
pub mod stp;
