//! The control API's route table. The router and the OpenAPI document (docs/openapi.json)
//! are both checked against [`ROUTES`] by a test, so they cannot drift apart.

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Health,
    ListVms,
    AddVm,
    GetVm,
    RemoveVm,
    ReplacePolicy,
    PatchCredentials,
    Stats,
    Ca,
    Metrics,
}

/// Every route: method, path pattern (`{id}` is one path segment), handler.
pub const ROUTES: &[(&str, &str, Route)] = &[
    ("GET", "/v1/health", Route::Health),
    ("GET", "/v1/vms", Route::ListVms),
    ("POST", "/v1/vms", Route::AddVm),
    ("GET", "/v1/vms/{id}", Route::GetVm),
    ("DELETE", "/v1/vms/{id}", Route::RemoveVm),
    ("PUT", "/v1/vms/{id}/policy", Route::ReplacePolicy),
    ("PATCH", "/v1/vms/{id}/credentials", Route::PatchCredentials),
    ("GET", "/v1/vms/{id}/stats", Route::Stats),
    ("GET", "/v1/vms/{id}/ca", Route::Ca),
    ("GET", "/metrics", Route::Metrics),
];

/// Why no route matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    NotFound,
    MethodNotAllowed,
}

/// Matches `method path` (path without query); returns the route and the `{id}` segment.
pub fn match_route(method: &str, path: &str) -> Result<(Route, Option<String>), Miss> {
    let mut path_matched = false;
    for (m, pattern, route) in ROUTES {
        if let Some(id) = match_pattern(pattern, path) {
            path_matched = true;
            if *m == method {
                return Ok((*route, id));
            }
        }
    }
    Err(if path_matched {
        Miss::MethodNotAllowed
    } else {
        Miss::NotFound
    })
}

fn match_pattern(pattern: &str, path: &str) -> Option<Option<String>> {
    let p: Vec<&str> = pattern.split('/').collect();
    let s: Vec<&str> = path.split('/').collect();
    if p.len() != s.len() {
        return None;
    }
    let mut id = None;
    for (a, b) in p.iter().zip(&s) {
        if *a == "{id}" {
            if b.is_empty() {
                return None;
            }
            id = Some((*b).to_owned());
        } else if a != b {
            return None;
        }
    }
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_and_misses() {
        assert_eq!(
            match_route("PATCH", "/v1/vms/a/credentials"),
            Ok((Route::PatchCredentials, Some("a".into())))
        );
        assert_eq!(match_route("GET", "/v1/vms"), Ok((Route::ListVms, None)));
        assert_eq!(match_route("PUT", "/v1/vms"), Err(Miss::MethodNotAllowed));
        assert_eq!(match_route("GET", "/v1/vms//stats"), Err(Miss::NotFound));
        assert_eq!(match_route("GET", "/nope"), Err(Miss::NotFound));
    }
}
