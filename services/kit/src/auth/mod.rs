//! Mesh-wide authentication and authorization.
//!
//! Every gRPC server installs [`AuthLayer`]: it reads the RPC's access rule
//! from the contract (`(postmesh.options.v1.auth)`), verifies the caller's
//! credential and hands the handler a typed [`Caller`]. Credentials are
//! EdDSA (Ed25519) JWTs signed by the user service's [`KeyRing`] (access
//! tokens, internal tokens for API-key callers, service tokens), or API keys
//! (`pm_…`), which the layer resolves through the user service. Revoked
//! sessions, users and keys stop working at once through [`Revocations`] in
//! the key-value store.
//!
//! [`Role`] and [`PERMISSIONS`] are the permission matrix (docs/PERMISSIONS.md
//! is generated from them and checked by a test).

mod keys;
mod layer;
mod revocation;
mod rules;
mod token;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

pub use keys::{Jwk, KeyRing};
pub use layer::{API_KEY_PREFIX, ApiKeyResolver, Auth, AuthLayer, Credential, caller_from_proto, credential};
pub use revocation::Revocations;
pub use rules::{MethodRule, MethodRules};
pub use token::{Claims, ServiceTokens, TokenKind, TokenSettings, Verifier};

/// A member's role in a workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including workspace settings and every role.
    Admin,
    /// Runs publishing: posts, accounts, webhooks, members below Manager.
    Manager,
    /// Writes and publishes posts and templates.
    Editor,
    /// Reads; changes nothing.
    Viewer,
    /// Integrations: API keys, webhooks, job inspection; reads content.
    Developer,
}

impl Role {
    /// Every role, most powerful first.
    pub const ALL: [Role; 5] = [Role::Admin, Role::Manager, Role::Editor, Role::Viewer, Role::Developer];

    /// The `postmesh.type.v1.Role` number.
    pub fn to_proto(self) -> i32 {
        match self {
            Role::Admin => 1,
            Role::Manager => 2,
            Role::Editor => 3,
            Role::Viewer => 4,
            Role::Developer => 5,
        }
    }

    /// From a `postmesh.type.v1.Role` number; `None` for unspecified/unknown.
    pub fn from_proto(value: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.to_proto() == value)
    }

    /// Lower-case name, as stored and carried in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Manager => "manager",
            Role::Editor => "editor",
            Role::Viewer => "viewer",
            Role::Developer => "developer",
        }
    }

    /// From its lower-case name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// Whether this role grants `permission`.
    pub fn grants(self, permission: &str) -> bool {
        PERMISSIONS.iter().any(|p| p.name == permission && p.roles.contains(&self))
    }

    /// Every permission this role grants.
    pub fn permissions(self) -> impl Iterator<Item = &'static str> {
        PERMISSIONS.iter().filter(move |p| p.roles.contains(&self)).map(|p| p.name)
    }
}

/// One row of the permission matrix.
#[derive(Debug)]
pub struct Permission {
    /// Name used in the contract and in API key scopes (`posts:write`).
    pub name: &'static str,
    /// What it allows.
    pub description: &'static str,
    /// Roles that grant it.
    pub roles: &'static [Role],
}

use Role::{Admin, Developer, Editor, Manager, Viewer};

/// The permission matrix: which role grants which permission.
pub const PERMISSIONS: &[Permission] = &[
    Permission {
        name: "workspace:manage",
        description: "rename the workspace and change its settings",
        roles: &[Admin],
    },
    Permission {
        name: "members:read",
        description: "list members and invitations, look up members",
        roles: &[Admin, Manager, Editor, Viewer, Developer],
    },
    Permission {
        name: "members:write",
        description: "invite and remove members, change roles (Managers: only Editor, Viewer and Developer)",
        roles: &[Admin, Manager],
    },
    Permission {
        name: "api_keys:write",
        description: "create, list and revoke one's own API keys",
        roles: &[Admin, Manager, Developer],
    },
    Permission {
        name: "posts:read",
        description: "read posts and their publishing status",
        roles: &[Admin, Manager, Editor, Viewer, Developer],
    },
    Permission {
        name: "posts:write",
        description: "create, edit, schedule and delete posts",
        roles: &[Admin, Manager, Editor],
    },
    Permission {
        name: "posts:publish",
        description: "publish now and retry publishing",
        roles: &[Admin, Manager, Editor],
    },
    Permission {
        name: "templates:read",
        description: "read templates",
        roles: &[Admin, Manager, Editor, Viewer, Developer],
    },
    Permission {
        name: "templates:write",
        description: "create, edit and delete templates",
        roles: &[Admin, Manager, Editor],
    },
    Permission {
        name: "accounts:read",
        description: "list platforms and connected social accounts",
        roles: &[Admin, Manager, Editor, Viewer, Developer],
    },
    Permission {
        name: "accounts:write",
        description: "connect and disconnect social accounts",
        roles: &[Admin, Manager],
    },
    Permission {
        name: "analytics:read",
        description: "dashboards, performance, audience, trends and reports",
        roles: &[Admin, Manager, Editor, Viewer, Developer],
    },
    Permission {
        name: "ai:use",
        description: "content generation and analysis",
        roles: &[Admin, Manager, Editor, Developer],
    },
    Permission {
        name: "notifications:read",
        description: "one's own notifications, preferences and live stream",
        roles: &[Admin, Manager, Editor, Viewer, Developer],
    },
    Permission {
        name: "notifications:send",
        description: "send notifications to members",
        roles: &[Admin, Manager],
    },
    Permission {
        name: "webhooks:read",
        description: "outbound endpoints, delivery logs and rules",
        roles: &[Admin, Manager, Developer],
    },
    Permission {
        name: "webhooks:write",
        description: "manage endpoints, rules and subscriptions; trigger and retry",
        roles: &[Admin, Manager, Developer],
    },
    Permission {
        name: "jobs:manage",
        description: "inspect and replay dead-lettered jobs",
        roles: &[Admin, Developer],
    },
];

/// Whether `name` is a permission of the matrix.
pub fn is_permission(name: &str) -> bool {
    PERMISSIONS.iter().any(|p| p.name == name)
}

/// How the caller proved who it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CallerKind {
    /// A user with an access token from a login session.
    User {
        /// The login session (refresh token family).
        session_id: String,
    },
    /// A user's API key, acting within one workspace with its scopes.
    ApiKey {
        /// The key's id (never the key).
        api_key_id: String,
    },
    /// Another postmesh service.
    Service {
        /// The calling service's name.
        name: String,
    },
}

/// Who is calling, as every handler sees it after [`AuthLayer`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// How the caller authenticated.
    pub kind: CallerKind,
    /// The acting user (absent for services).
    pub user_id: Option<String>,
    /// The workspace the credential is bound to.
    pub workspace_id: Option<String>,
    /// The user's roles in that workspace.
    pub roles: Vec<Role>,
    /// Effective permissions: from the roles, narrowed to an API key's
    /// scopes, or a service token's scopes.
    pub permissions: BTreeSet<String>,
}

impl Caller {
    /// Whether the caller holds `permission`.
    pub fn can(&self, permission: &str) -> bool {
        self.permissions.contains(permission)
    }

    /// Whether the caller is another postmesh service.
    pub fn is_service(&self) -> bool {
        matches!(self.kind, CallerKind::Service { .. })
    }

    /// The acting user, or UNAUTHENTICATED for service callers.
    pub fn user_id(&self) -> Result<&str, tonic::Status> {
        self.user_id
            .as_deref()
            .ok_or_else(|| tonic::Status::unauthenticated("this call needs a user, not a service"))
    }

    /// The workspace, or FAILED_PRECONDITION when the credential has none.
    pub fn workspace_id(&self) -> Result<&str, tonic::Status> {
        self.workspace_id
            .as_deref()
            .ok_or_else(|| tonic::Status::failed_precondition("the credential is not bound to a workspace"))
    }

    /// Fails with PERMISSION_DENIED unless the caller acts in `workspace_id`:
    /// one workspace never reads or changes another's data.
    pub fn require_workspace(&self, workspace_id: &str) -> Result<(), tonic::Status> {
        if self.is_service() || self.workspace_id.as_deref() == Some(workspace_id) {
            Ok(())
        } else {
            Err(tonic::Status::permission_denied(format!("not a member of workspace {workspace_id}")))
        }
    }

    /// The highest role held (roles are listed most powerful first).
    pub fn top_role(&self) -> Option<Role> {
        self.roles.iter().min().copied()
    }

    /// The caller of `request`, set by [`AuthLayer`]; UNAUTHENTICATED if the
    /// RPC is public and no credential was given.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<&Caller, tonic::Status> {
        request
            .extensions()
            .get::<Caller>()
            .ok_or_else(|| tonic::Status::unauthenticated("sign in first: no credential was sent"))
    }
}

/// The permission matrix and each RPC's rule as Markdown (the generated
/// part of docs/PERMISSIONS.md).
pub fn permission_matrix_markdown() -> String {
    let mut out = String::from(
        "| permission | Admin | Manager | Editor | Viewer | Developer | allows |\n|---|---|---|---|---|---|---|\n",
    );
    for permission in PERMISSIONS {
        let cells: Vec<&str> =
            Role::ALL.iter().map(|r| if permission.roles.contains(r) { "✓" } else { "" }).collect();
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            permission.name,
            cells.join(" | "),
            permission.description
        ));
    }
    let rules = MethodRules::postmesh();
    let mut paths: Vec<(&str, &MethodRule)> = rules.iter().collect();
    paths.sort_by_key(|(path, _)| *path);
    out.push_str("\n| RPC | who may call it |\n|---|---|\n");
    for (path, rule) in paths {
        let who = match rule {
            MethodRule::Public => "anyone (no credential)".to_owned(),
            MethodRule::Internal => "postmesh services only".to_owned(),
            MethodRule::Authenticated { permission: None } => "any signed-in caller".to_owned(),
            MethodRule::Authenticated { permission: Some(p) } => format!("`{p}`"),
        };
        out.push_str(&format!("| `{}` | {who} |\n", path.trim_start_matches('/')));
    }
    out
}

/// Permissions granted by a set of roles.
pub fn permissions_of(roles: &[Role]) -> BTreeSet<String> {
    roles.iter().flat_map(|r| r.permissions()).map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix_matches_the_contract_vocabulary() {
        for permission in PERMISSIONS {
            assert!(!permission.roles.is_empty(), "{} is granted by nobody", permission.name);
            assert!(permission.roles.contains(&Role::Admin), "Admin lacks {}", permission.name);
        }
        assert!(Role::Viewer.permissions().all(|p| p.ends_with(":read")), "Viewers only read");
        assert!(!Role::Editor.grants("members:write"), "Editors cannot manage members");
        assert!(Role::Developer.grants("api_keys:write"));
    }

    #[test]
    fn roles_round_trip_through_proto_and_names() {
        for role in Role::ALL {
            assert_eq!(Role::from_proto(role.to_proto()), Some(role));
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::from_proto(0), None);
    }
}
