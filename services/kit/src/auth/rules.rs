//! Who may call each RPC, read once from the contract: the
//! `(postmesh.options.v1.auth)` option on every method of the descriptor
//! set. Health and reflection are public; any other method not in the
//! contract needs a signed-in caller.

use std::collections::HashMap;

use prost_reflect::{DescriptorPool, Value};

/// The access rule of one RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MethodRule {
    /// No credential needed.
    Public,
    /// Only other postmesh services.
    Internal,
    /// Any authenticated caller holding `permission` (if any).
    Authenticated {
        /// The permission required, if any.
        permission: Option<String>,
    },
}

/// Rules by gRPC path (`/package.Service/Method`).
#[derive(Debug, Clone)]
pub struct MethodRules {
    rules: HashMap<String, MethodRule>,
}

impl MethodRules {
    /// Reads the rules from an encoded file descriptor set.
    pub fn from_descriptor_set(bytes: &[u8]) -> Result<Self, prost_reflect::DescriptorError> {
        let pool = DescriptorPool::decode(bytes)?;
        let extension = pool.get_extension_by_name("postmesh.options.v1.auth");
        let mut rules = HashMap::new();
        for service in pool.services() {
            for method in service.methods() {
                let path = format!("/{}/{}", service.full_name(), method.name());
                let options = method.options();
                let rule = match &extension {
                    Some(ext) if options.has_extension(ext) => {
                        let value = options.get_extension(ext);
                        let message = value.as_message();
                        let flag = |name: &str| {
                            message
                                .and_then(|m| m.get_field_by_name(name))
                                .and_then(|v| v.as_bool())
                                .unwrap_or(false)
                        };
                        let permission =
                            message.and_then(|m| m.get_field_by_name("permission")).and_then(|v| {
                                match v.as_ref() {
                                    Value::String(s) if !s.is_empty() => Some(s.clone()),
                                    _ => None,
                                }
                            });
                        if flag("public") {
                            MethodRule::Public
                        } else if flag("internal") {
                            MethodRule::Internal
                        } else {
                            MethodRule::Authenticated { permission }
                        }
                    }
                    _ => MethodRule::Authenticated { permission: None },
                };
                rules.insert(path, rule);
            }
        }
        Ok(Self { rules })
    }

    /// The rules of the postmesh contract.
    pub fn postmesh() -> Self {
        Self::from_descriptor_set(postmesh_proto::FILE_DESCRIPTOR_SET).expect("the compiled contract decodes")
    }

    /// The rule for a gRPC path.
    pub fn rule(&self, path: &str) -> MethodRule {
        if let Some(rule) = self.rules.get(path) {
            return rule.clone();
        }
        if path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.") {
            MethodRule::Public
        } else {
            MethodRule::Authenticated { permission: None }
        }
    }

    /// Every path with its rule (for docs and tests).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &MethodRule)> {
        self.rules.iter().map(|(path, rule)| (path.as_str(), rule))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_come_from_the_contract() {
        let rules = MethodRules::postmesh();
        assert_eq!(rules.rule("/postmesh.user.v1.UserService/Login"), MethodRule::Public);
        assert_eq!(rules.rule("/postmesh.user.v1.UserService/AuthenticateApiKey"), MethodRule::Internal);
        assert_eq!(
            rules.rule("/postmesh.user.v1.UserService/CreateApiKey"),
            MethodRule::Authenticated { permission: Some("api_keys:write".into()) }
        );
        assert_eq!(
            rules.rule("/postmesh.user.v1.UserService/GetProfile"),
            MethodRule::Authenticated { permission: None }
        );
        assert_eq!(rules.rule("/grpc.health.v1.Health/Check"), MethodRule::Public);
        assert_eq!(rules.rule("/postmesh.nope.v1.Nope/Call"), MethodRule::Authenticated { permission: None });
    }

    #[test]
    fn every_permission_in_the_contract_is_in_the_matrix() {
        for (path, rule) in MethodRules::postmesh().iter() {
            if let MethodRule::Authenticated { permission: Some(permission) } = rule {
                assert!(
                    super::super::is_permission(permission),
                    "{path} requires unknown permission {permission}"
                );
            }
        }
    }
}
