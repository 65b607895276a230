# Unit tests for authz.rego. Run with `guestgate test` (or `opa test policies/`).
# Fixtures are named fx_* so the runner does not mistake them for tests.
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
	"NEW": {"guests": {"groups": {"acme-guests": {"permissions": ["view"], "expires": "2999-01-01T00:00:00Z"}}}},
}

fx_users := {
	"gone": {"groups": ["acme-guests"], "expires": "2001-01-01T00:00:00Z"},
	"ann": {"groups": ["acme-guests"]},
	"alice": {"groups": ["staff"]},
}

fx_input(family, space, action, name, groups) := {
	"request": {"method": "GET", "path": "/", "query": {}},
	"route": {
		"name": "t", "family": family, "space": space, "content": null,
		"user": null, "action": action, "public": false,
	},
	"user": {"name": name, "groups": groups, "authenticated": true, "claims": {}},
}

fx_decide(inp) := d if {
	d := guestgate.decision with input as inp
		with data.groups as fx_groups
		with data.spaces as fx_spaces
		with data.users as fx_users
}

test_regular_user_passes if {
	d := fx_decide(fx_input("admin", null, "view", "alice", ["staff"]))
	d.allow == true
	d.guest == false
}

# The RVM of regorus 0.14.1 got this case wrong; the interpreter (and OPA) must not.
test_mixed_groups_make_a_regular_user if {
	d := fx_decide(fx_input("people_directory", null, "view", "mia", ["acme-guests", "staff"]))
	d.allow == true
	d.reason == "regular_user"
	d.guest == false
}

test_unknown_group_counts_as_regular if {
	d := fx_decide(fx_input("admin", null, "view", "x", ["acme-guests", "not-in-directory"]))
	d.allow == true
	d.guest == false
}

test_no_groups_is_not_a_guest if {
	d := fx_decide(fx_input("space", "HR", "view", "nobody", []))
	d.reason == "regular_user"
}

test_guest_views_granted_space if {
	d := fx_decide(fx_input("space", "ENG", "view", "gary", ["acme-guests"]))
	d.allow == true
	d.guest == true
	d.reason == "guest_space_permission"
}

test_space_keys_compare_case_insensitively if {
	d := fx_decide(fx_input("space", "eng", "view", "gary", ["acme-guests"]))
	d.allow == true
}

test_guest_denied_other_space if {
	d := fx_decide(fx_input("space", "HR", "view", "gary", ["acme-guests"]))
	d.allow == false
	d.reason == "space_not_granted"
	d.status == 403
	d.guest == true
}

test_grants_of_other_guest_groups_never_leak if {
	d := fx_decide(fx_input("content", "HR", "view", "gina", ["acme-guests"]))
	d.allow == false
}

test_guest_missing_permission_is_named if {
	d := fx_decide(fx_input("content", "ENG", "edit", "gary", ["acme-guests"]))
	d.allow == false
	d.reason == "missing_permission_edit"
}

test_guest_granted_comment if {
	d := fx_decide(fx_input("content", "ENG", "comment", "gary", ["acme-guests"]))
	d.allow == true
}

test_user_grant_adds_to_group_grant if {
	d := fx_decide(fx_input("content", "ENG", "edit", "gina", ["acme-guests"]))
	d.allow == true
}

test_guest_never_admin if {
	d := fx_decide(fx_input("space", "ENG", "admin", "gary", ["acme-guests"]))
	d.allow == false
	d.reason == "missing_permission_admin"
}

test_guest_blocked_families if {
	every family in guestgate.guest_blocked_families {
		d := fx_decide(fx_input(family, "ENG", "view", "gary", ["acme-guests"]))
		d.allow == false
		d.reason == "guest_blocked_family"
	}
}

test_page_analytics_follow_the_space if {
	fx_decide(fx_input("page_analytics", "ENG", "view", "gary", ["acme-guests"])).allow == true
	fx_decide(fx_input("page_analytics", "HR", "view", "gary", ["acme-guests"])).allow == false
}

test_guest_ui_families_allowed if {
	fx_decide(fx_input("static", null, "view", "gary", ["acme-guests"])).allow == true
	fx_decide(fx_input("auth", null, "edit", "gary", ["acme-guests"])).allow == true
}

test_guest_own_profile_only if {
	own := object.union(fx_input("user_profile", null, "view", "gary", ["acme-guests"]), {"route": object.union(fx_input("user_profile", null, "view", "gary", ["acme-guests"]).route, {"user": "Gary"})})
	fx_decide(own).allow == true
	other := object.union(own, {"route": object.union(own.route, {"user": "alice"})})
	fx_decide(other).allow == false
}

test_guest_sees_profiles_of_users_sharing_a_space if {
	base := fx_input("user_profile", null, "view", "gary", ["acme-guests"])
	gina := object.union(base, {"route": object.union(base.route, {"user": "gina"})})
	fx_decide(gina).reason == "shared_space_profile"
	mates := object.union(base, {"route": object.union(base.route, {"user": "ann"})})
	fx_decide(mates).allow == true
	alice := object.union(base, {"route": object.union(base.route, {"user": "alice"})})
	d := fx_decide(alice)
	d.allow == false
	d.reason == "profile_not_shared"
}

test_unresolved_space_denies_guest if {
	d := fx_decide(fx_input("content", null, "view", "gary", ["acme-guests"]))
	d.allow == false
	d.reason == "space_unresolved"
}

test_expired_grant_no_longer_counts if {
	fx_decide(fx_input("space", "OLD", "view", "gary", ["acme-guests"])).allow == false
	fx_decide(fx_input("space", "NEW", "view", "gary", ["acme-guests"])).allow == true
}

test_expired_guest_user_denied if {
	d := fx_decide(fx_input("space", "ENG", "view", "gone", ["acme-guests"]))
	d.allow == false
	d.reason == "guest_access_expired"
}

test_unauthenticated_gets_401 if {
	inp := object.union(fx_input("space", "ENG", "view", null, []), {"user": {"name": null, "groups": [], "authenticated": false, "claims": {}}})
	d := fx_decide(inp)
	d.allow == false
	d.status == 401
}

test_public_route_allowed_for_anyone if {
	base := fx_input("auth", null, "view", null, [])
	inp := object.union(base, {
		"route": object.union(base.route, {"public": true}),
		"user": {"name": null, "groups": [], "authenticated": false, "claims": {}},
	})
	fx_decide(inp).allow == true
}

test_search_only_when_filtered if {
	base := fx_input("search", null, "view", "gary", ["acme-guests"])
	filtered := object.union(base, {"route": object.union(base.route, {"filtered": true})})
	d := fx_decide(filtered)
	d.allow == true
	d.reason == "guest_filtered_listing"
	u := fx_decide(base)
	u.allow == false
	u.reason == "guest_unfiltered_listing"
}

test_viewable_spaces_follow_view_grants if {
	v := guestgate.viewable_spaces with input as fx_input("search", null, "view", "gina", ["acme-guests"])
		with data.groups as fx_groups
		with data.spaces as fx_spaces
		with data.users as fx_users
	v == {"ENG", "NEW"}
}

test_viewable_spaces_empty_for_regular_and_expired_users if {
	r := guestgate.viewable_spaces with input as fx_input("search", null, "view", "alice", ["staff"])
		with data.groups as fx_groups
		with data.spaces as fx_spaces
		with data.users as fx_users
	count(r) == 0
	e := guestgate.viewable_spaces with input as fx_input("search", null, "view", "gone", ["acme-guests"])
		with data.groups as fx_groups
		with data.spaces as fx_spaces
		with data.users as fx_users
	count(e) == 0
}

test_unmatched_requests_denied_for_guests if {
	d := fx_decide(fx_input("other", null, "view", "gary", ["acme-guests"]))
	d.allow == false
}

# ---- expiry at the boundary: the instant an expiry names is the first one it no longer
# counts (`now >= expires`), judged from the request time.
fx_boundary_spaces := {
	"TMP": {"guests": {
		"groups": {"beta-guests": ["view"]},
		"users": {"tess": {"permissions": ["view", "edit"], "expires": "2030-06-01T12:00:00Z"}},
	}},
	"GRP": {"guests": {"groups": {"acme-guests": {"permissions": ["view"], "expires": "2030-06-01T12:00:00Z"}}}},
}

fx_boundary_users := {
	"tess": {"groups": ["acme-guests"]},
	"vera": {"groups": ["acme-guests"], "expires": "2030-06-01T12:00:00Z"},
	"bob": {"groups": [{"group": "beta-guests", "expires": "2030-06-01T12:00:00Z"}]},
}

fx_at(inp, instant) := d if {
	d := guestgate.decision with input as inp
		with data.groups as fx_groups
		with data.spaces as fx_boundary_spaces
		with data.users as fx_boundary_users
		with time.now_ns as time.parse_rfc3339_ns(instant)
}

fx_just_before := "2030-06-01T11:59:59.999999999Z"

fx_at_expiry := "2030-06-01T12:00:00Z"

test_user_grant_counts_until_its_expiry if {
	inp := fx_input("space", "TMP", "edit", "tess", ["acme-guests"])
	fx_at(inp, fx_just_before).allow == true
	d := fx_at(inp, fx_at_expiry)
	d.allow == false
	d.reason == "space_not_granted"
}

test_group_grant_counts_until_its_expiry if {
	inp := fx_input("space", "GRP", "view", "tess", ["acme-guests"])
	fx_at(inp, fx_just_before).allow == true
	fx_at(inp, fx_at_expiry).allow == false
}

test_guest_user_access_ends_at_user_expiry if {
	inp := fx_input("space", "GRP", "view", "vera", ["acme-guests"])
	fx_at(inp, "2030-01-01T00:00:00Z").allow == true
	d := fx_at(inp, fx_at_expiry)
	d.allow == false
	d.reason == "guest_access_expired"
}

test_membership_counts_until_its_expiry if {
	inp := fx_input("space", "TMP", "view", "bob", ["beta-guests"])
	fx_at(inp, fx_just_before).allow == true
	fx_at(inp, fx_at_expiry).allow == false
}

# A lapsed guest membership takes the group's grants away but never makes the user regular:
# the people directory stays blocked.
test_lapsed_membership_keeps_the_user_a_guest if {
	d := fx_at(fx_input("people_directory", null, "view", "bob", ["beta-guests"]), "2031-01-01T00:00:00Z")
	d.allow == false
	d.guest == true
	d.reason == "guest_blocked_family"
}

# The token naming the group again does not revive a membership the directory ended.
test_lapsed_membership_not_revived_by_token_groups if {
	inp := fx_input("space", "TMP", "view", "bob", ["beta-guests", "beta-guests"])
	fx_at(inp, fx_at_expiry).allow == false
}

test_viewable_spaces_shrink_at_expiry if {
	inp := fx_input("search", null, "view", "tess", ["acme-guests"])
	before := guestgate.viewable_spaces with input as inp
		with data.groups as fx_groups
		with data.spaces as fx_boundary_spaces
		with data.users as fx_boundary_users
		with time.now_ns as time.parse_rfc3339_ns(fx_just_before)
	before == {"TMP", "GRP"}
	after := guestgate.viewable_spaces with input as inp
		with data.groups as fx_groups
		with data.spaces as fx_boundary_spaces
		with data.users as fx_boundary_users
		with time.now_ns as time.parse_rfc3339_ns(fx_at_expiry)
	count(after) == 0
}
