# Unit tests for authz.rego. Run with `guestgate test` (or `opa test policies/`).
# Fixtures are named fx_* so the runner does not mistake them for tests.
#
# The decision reads the directory's facts from the input (input.user.guest, expired,
# permissions), so most cases state the facts directly; how the gateway derives them from
# the data document — the guest rule, grants, expiries, lapsed memberships — is tested in
# Rust beside that code (src/directory.rs) and end to end in tests/. The listing and profile
# rules still read `data`, so their cases bring a data document.
package guestgate_test

import rego.v1

import data.guestgate

fx_groups := {
	"staff": {"guest": false},
	"acme-guests": {"guest": true},
	"beta-guests": {"guest": true},
}

fx_spaces := {
	"ENG": {"guests": {
		"groups": {"acme-guests": ["view", "comment"]},
		"users": {"gina": ["view", "edit"]},
	}},
	"HR": {"guests": {"groups": {"beta-guests": ["view"]}}},
	"OLD": {"guests": {"groups": {"acme-guests": {"permissions": ["view"], "expires": "2001-01-01T00:00:00Z"}}}},
	"NEW": {"guests": {"groups": {"acme-guests": {"permissions": ["view"], "expires": "2199-01-01T00:00:00Z"}}}},
}

fx_users := {
	"gone": {"groups": ["acme-guests"], "expires": "2001-01-01T00:00:00Z"},
	"ann": {"groups": ["acme-guests"]},
	"alice": {"groups": ["staff"]},
}

# What the gateway's directory says of a guest holding `permissions` in the route's space,
# and of a regular user.
fx_guest(permissions) := {"regular": false, "guest": true, "expired": false, "permissions": permissions}

fx_regular := {"regular": true, "guest": false, "expired": false, "permissions": []}

# Neither: no declared group at all (an unknown user, undeclared or no groups).
fx_unclassified := {"regular": false, "guest": false, "expired": false, "permissions": []}

fx_input(family, space, action, name, groups, facts) := {
	"request": {"method": "GET", "path": "/", "query": {}},
	"route": {
		"name": "t", "family": family, "space": space, "content": null,
		"user": null, "action": action, "public": false, "filtered": false,
	},
	"user": object.union({"name": name, "groups": groups, "authenticated": true, "claims": {}}, facts),
}

# Gary, a guest of acme-guests, on a route of `family` in `space`, holding `permissions` there.
fx_gary(family, space, action, permissions) := fx_input(family, space, action, "gary", ["acme-guests"], fx_guest(permissions))

fx_with_route(inp, fields) := object.union(inp, {"route": object.union(inp.route, fields)})

fx_decide(inp) := d if {
	d := guestgate.decision with input as inp
		with data.groups as fx_groups
		with data.spaces as fx_spaces
		with data.users as fx_users
}

test_regular_user_passes if {
	d := fx_decide(fx_input("admin", null, "view", "alice", ["staff"], fx_regular))
	d.allow == true
	d.reason == "regular_user"
	d.guest == false
}

# Groups alone never make a user regular or a guest: the directory's facts do
# (input.user.regular, input.user.guest).
test_guest_groups_with_the_regular_fact_are_regular if {
	d := fx_decide(fx_input("people_directory", null, "view", "mia", ["acme-guests", "staff"], fx_regular))
	d.allow == true
	d.guest == false
}

test_regular_group_names_without_the_regular_fact_are_not_regular if {
	d := fx_decide(fx_input("space", "ENG", "view", "x", ["staff"], fx_unclassified))
	d.allow == false
	d.reason == "user_unclassified"
}

# The gateway always sends the facts; an input without them (a hand-written one, a caller
# other than the gateway) is neither regular nor a guest: it fails closed.
test_missing_facts_fail_closed if {
	inp := fx_input("admin", null, "view", "x", ["staff"], {})
	d := fx_decide(inp)
	d.allow == false
	d.reason == "user_unclassified"
	fx_decide(fx_input("space", "ENG", "view", "x", ["staff"], {})).allow == false
}

# Every fact an allowed guest request rests on, taken away one at a time, denies.
fx_allowed_guest := fx_gary("space", "ENG", "view", ["view", "comment"])

# (object.union merges nested objects, so a fact is taken away by rebuilding the user.)
fx_without(fact) := {
	"request": fx_allowed_guest.request,
	"route": fx_allowed_guest.route,
	"user": {k: v | some k, v in fx_allowed_guest.user; k != fact},
}

fx_with_fact(fact, value) := object.union(fx_allowed_guest, {"user": object.union(fx_allowed_guest.user, {fact: value})})

test_each_dropped_fact_denies if {
	fx_decide(fx_allowed_guest).allow == true
	fx_decide(fx_without("regular")).allow == false
	fx_decide(fx_without("guest")).allow == false
	fx_decide(fx_without("expired")).allow == false
	fx_decide(fx_without("permissions")).allow == false
}

test_each_malformed_fact_denies if {
	fx_decide(fx_with_fact("regular", "no")).allow == false
	fx_decide(fx_with_fact("guest", "yes")).allow == false
	fx_decide(fx_with_fact("expired", "no")).allow == false
	fx_decide(fx_with_fact("permissions", "view")).allow == false
}

test_guest_views_granted_space if {
	d := fx_decide(fx_gary("space", "ENG", "view", ["view", "comment"]))
	d.allow == true
	d.guest == true
	d.reason == "guest_space_permission"
}

test_guest_denied_space_without_grants if {
	d := fx_decide(fx_gary("space", "HR", "view", []))
	d.allow == false
	d.reason == "space_not_granted"
	d.status == 403
	d.guest == true
}

test_guest_missing_permission_is_named if {
	d := fx_decide(fx_gary("content", "ENG", "edit", ["view", "comment"]))
	d.allow == false
	d.reason == "missing_permission_edit"
}

test_guest_granted_comment if {
	fx_decide(fx_gary("content", "ENG", "comment", ["view", "comment"])).allow == true
}

test_every_action_needs_its_own_permission if {
	every action in ["view", "edit", "comment", "attach", "delete", "export"] {
		fx_decide(fx_gary("content", "ENG", action, [action])).allow == true
		others := [p | some p in ["view", "edit", "comment", "attach", "delete", "export"]; p != action]
		fx_decide(fx_gary("content", "ENG", action, others)).allow == false
	}
}

test_guest_never_admin if {
	d := fx_decide(fx_gary("space", "ENG", "admin", ["view", "comment"]))
	d.allow == false
	d.reason == "missing_permission_admin"
}

# Should `admin` ever reach the permissions (the gateway filters it, loading refuses it),
# it still grants nothing.
test_admin_in_the_permissions_grants_nothing if {
	d := fx_decide(fx_gary("space", "ENG", "admin", ["view", "admin"]))
	d.allow == false
	d.reason == "missing_permission_admin"
}

test_guest_blocked_families if {
	every family in guestgate.guest_blocked_families {
		d := fx_decide(fx_gary(family, "ENG", "view", ["view", "comment"]))
		d.allow == false
		d.reason == "guest_blocked_family"
	}
}

test_page_analytics_follow_the_space if {
	fx_decide(fx_gary("page_analytics", "ENG", "view", ["view"])).allow == true
	fx_decide(fx_gary("page_analytics", "HR", "view", [])).allow == false
}

test_collab_needs_edit if {
	fx_decide(fx_gary("collab", "ENG", "edit", ["view", "edit"])).allow == true
	fx_decide(fx_gary("collab", "ENG", "edit", ["view"])).reason == "missing_permission_edit"
}

test_guest_ui_families_allowed if {
	fx_decide(fx_gary("static", null, "view", [])).allow == true
	fx_decide(fx_gary("auth", null, "edit", [])).allow == true
}

test_guest_own_profile_only if {
	own := fx_with_route(fx_gary("user_profile", null, "view", []), {"user": "Gary"})
	fx_decide(own).reason == "own_profile"
	other := fx_with_route(own, {"user": "alice"})
	fx_decide(other).allow == false
}

test_guest_sees_profiles_of_users_sharing_a_space if {
	base := fx_gary("user_profile", null, "view", [])
	fx_decide(fx_with_route(base, {"user": "gina"})).reason == "shared_space_profile"
	fx_decide(fx_with_route(base, {"user": "ann"})).allow == true
	d := fx_decide(fx_with_route(base, {"user": "alice"}))
	d.allow == false
	d.reason == "profile_not_shared"
}

test_unresolved_space_denies_guest if {
	d := fx_decide(fx_gary("content", null, "view", ["view"]))
	d.allow == false
	d.reason == "space_unresolved"
}

test_expired_guest_user_denied if {
	inp := fx_input("space", "ENG", "view", "gone", ["acme-guests"], {"regular": false, "guest": true, "expired": true, "permissions": []})
	d := fx_decide(inp)
	d.allow == false
	d.reason == "guest_access_expired"
}

test_expired_guest_denied_even_with_permissions if {
	inp := fx_input("space", "ENG", "view", "gone", ["acme-guests"], {"regular": false, "guest": true, "expired": true, "permissions": ["view"]})
	fx_decide(inp).reason == "guest_access_expired"
}

test_unauthenticated_gets_401 if {
	inp := object.union(fx_gary("space", "ENG", "view", []), {"user": {"name": null, "groups": [], "authenticated": false, "claims": {}, "guest": false, "expired": false, "permissions": []}})
	d := fx_decide(inp)
	d.allow == false
	d.status == 401
}

test_public_route_allowed_for_anyone if {
	base := fx_with_route(fx_gary("auth", null, "view", []), {"public": true})
	inp := object.union(base, {"user": {"name": null, "groups": [], "authenticated": false, "claims": {}, "guest": false, "expired": false, "permissions": []}})
	d := fx_decide(inp)
	d.allow == true
	d.reason == "public_route"
}

test_search_only_when_filtered if {
	base := fx_gary("search", null, "view", [])
	d := fx_decide(fx_with_route(base, {"filtered": true}))
	d.allow == true
	d.reason == "guest_filtered_listing"
	u := fx_decide(base)
	u.allow == false
	u.reason == "guest_unfiltered_listing"
}

test_unmatched_requests_denied_for_guests if {
	fx_decide(fx_gary("other", null, "view", [])).allow == false
}

fx_viewable(inp) := v if {
	v := guestgate.viewable_spaces with input as inp
		with data.groups as fx_groups
		with data.spaces as fx_spaces
		with data.users as fx_users
}

test_viewable_spaces_follow_view_grants if {
	fx_viewable(fx_input("search", null, "view", "gina", ["acme-guests"], fx_guest([]))) == {"ENG", "NEW"}
}

test_viewable_spaces_empty_for_regular_and_expired_users if {
	count(fx_viewable(fx_input("search", null, "view", "alice", ["staff"], fx_regular))) == 0
	expired := {"guest": true, "expired": true, "permissions": []}
	count(fx_viewable(fx_input("search", null, "view", "gone", ["acme-guests"], expired))) == 0
}

# ---- listings at the expiry boundary: the instant an expiry names is the first one it no
# longer counts (`now >= expires`), judged from the request time.
fx_boundary_spaces := {
	"TMP": {"guests": {
		"groups": {"beta-guests": ["view"]},
		"users": {"tess": {"permissions": ["view", "edit"], "expires": "2030-06-01T12:00:00Z"}},
	}},
	"GRP": {"guests": {"groups": {"acme-guests": {"permissions": ["view"], "expires": "2030-06-01T12:00:00Z"}}}},
}

fx_boundary_users := {
	"tess": {"groups": ["acme-guests"]},
	"bob": {"groups": [{"group": "beta-guests", "expires": "2030-06-01T12:00:00Z"}]},
}

fx_viewable_at(inp, instant) := v if {
	v := guestgate.viewable_spaces with input as inp
		with data.groups as fx_groups
		with data.spaces as fx_boundary_spaces
		with data.users as fx_boundary_users
		with time.now_ns as time.parse_rfc3339_ns(instant)
}

fx_just_before := "2030-06-01T11:59:59.999999999Z"

fx_at_expiry := "2030-06-01T12:00:00Z"

test_viewable_spaces_shrink_at_expiry if {
	inp := fx_input("search", null, "view", "tess", ["acme-guests"], fx_guest([]))
	fx_viewable_at(inp, fx_just_before) == {"TMP", "GRP"}
	count(fx_viewable_at(inp, fx_at_expiry)) == 0
}

test_viewable_spaces_drop_a_lapsed_membership if {
	inp := fx_input("search", null, "view", "bob", ["beta-guests"], fx_guest([]))
	fx_viewable_at(inp, fx_just_before) == {"TMP"}
	count(fx_viewable_at(inp, fx_at_expiry)) == 0
}

# Allowed guest requests outside a space (UI, profiles) stand on the facts too.
test_incomplete_facts_deny_outside_spaces_too if {
	ui := fx_gary("static", null, "view", [])
	fx_decide(ui).allow == true
	fx_decide({"request": ui.request, "route": ui.route, "user": {k: v | some k, v in ui.user; k != "permissions"}}).allow == false
	fx_decide({"request": ui.request, "route": ui.route, "user": {k: v | some k, v in ui.user; k != "expired"}}).allow == false
}
