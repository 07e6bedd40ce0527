/** Casbin model texts shared by tests. */

/** Plain RBAC with keyMatch2 paths and a "*" action wildcard: the shape of the example policies/model.conf. */
export const RBAC_MODEL = `
[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = g(r.sub, p.sub) && keyMatch2(r.obj, p.obj) && (r.act == p.act || p.act == "*")
`;
