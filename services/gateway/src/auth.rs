//! API-key authentication ([`shared::auth`]) and the role each gateway method needs.

pub use shared::auth::*;

/// The role a gRPC method needs, or `None` for open methods (health, reflection).
pub fn required_role(path: &str) -> Option<Role> {
    if path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.") {
        return None;
    }
    let admin = path.starts_with("/ecommerce.gateway.v1.GatewayAdmin/")
        || path == "/inference.GRPCInferenceService/RepositoryModelLoad"
        || path == "/inference.GRPCInferenceService/RepositoryModelUnload";
    Some(if admin { Role::Admin } else { Role::Client })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_need_the_right_role() {
        assert_eq!(required_role("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            required_role("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            None
        );
        assert_eq!(
            required_role("/ecommerce.gateway.v1.Gateway/Embed"),
            Some(Role::Client)
        );
        assert_eq!(
            required_role("/ecommerce.gateway.v1.GatewayAdmin/SetCanary"),
            Some(Role::Admin)
        );
        assert_eq!(
            required_role("/inference.GRPCInferenceService/ModelInfer"),
            Some(Role::Client)
        );
        assert_eq!(
            required_role("/inference.GRPCInferenceService/RepositoryModelLoad"),
            Some(Role::Admin)
        );
    }
}
