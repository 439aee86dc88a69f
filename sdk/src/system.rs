//! Facts about the node a check plugin runs on.

/// The node's DNS resolvers as `ip:port` (check plugins may query them on
/// port 53).
pub fn resolvers() -> Vec<String> {
    crate::__checker::system::resolvers()
}
