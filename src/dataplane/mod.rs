pub mod ethtool;
pub mod netlink;
pub mod toeplitz;
