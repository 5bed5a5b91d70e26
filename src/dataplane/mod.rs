//! AF_XDP data plane: the XDP program, UMEM and socket rings.

pub mod bpf;
pub mod sys;
pub mod xsk;
