# guestgate's shipped guest policy (docs/CONFIGURATION.md "Data document", docs/POLICIES.md).
#
# Input: request, route (family, space, content, action, public, filtered) and user (name,
# groups — the directory's and the token's, unioned — authenticated, claims), plus what the
# gateway's directory says of the user at the request's instant:
#   input.user.regular      at least one of the user's groups is a declared regular group;
#   input.user.guest        the guest rule: declared guest groups only (or no declared
#                           group at all under identity.unknown_users = "guest");
#   input.user.expired      the user's own `expires` has passed;
#   input.user.permissions  what the user's active grants give in input.route.space (their
#                           own grant and those of groups whose membership has not lapsed;
#                           never `admin`; empty once expired).
# The gateway computes these by direct lookups on the data document: written in Rego they
# cost three times the rest of an uncached decision. `data` still holds the whole document
# for rules of your own (and for the listing and profile rules below).
#
# Output (`decision`): {"allow", "reason", "guest", "status"}. Only `allow == true` allows.
#
# Regular users pass: the wiki keeps enforcing its own permissions for them. Guests see
# nothing unless a space is granted to them or to one of their guest groups, and then only
# with the permissions of those grants.
#
# Valid OPA v1 Rego; `opa test policies/` runs the tests beside it unchanged.
package guestgate

import rego.v1

# Families no guest may reach: site-wide user information, system apps, administration,
# feeds that leak across spaces, and everything the route profile does not describe.
# (Search is judged below: allowed only where the gateway filters the listing.)
guest_blocked_families := {
	"people_directory",
	"user_search",
	"user_picker",
	"mentions",
	"site_analytics",
	"space_analytics",
	"team_calendars",
	"questions",
	"apps",
	"admin",
	"space_admin",
	"space_export",
	"feeds",
	"other",
}

# Families the wiki's UI needs whatever space is shown: static resources and sign-in.
guest_ui_families := {"static", "auth"}

# Families judged by the space they touch and the permission the action needs.
space_families := {"space", "content", "page_analytics", "collab"}

# Permissions a grant can carry. `admin` is not among them: `guestgate check` refuses it in
# the data, the gateway never puts it in input.user.permissions, and the listing rules
# below ignore it should it slip through.
grantable := {"view", "edit", "comment", "attach", "delete", "export"}

default decision := {"allow": false, "reason": "default_deny", "guest": false, "status": 403}

decision := allow("public_route") if {
	input.route.public == true
} else := deny("unauthenticated", 401) if {
	input.user.authenticated != true
} else := {"allow": true, "reason": "regular_user", "guest": false, "status": 200} if {
	input.user.regular == true
} else := guest_decision if {
	input.user.regular == false
	input.user.guest == true
} else := deny("user_unclassified", 403)

# A guest's request is judged by the kind of family it touches; dispatching once on the
# family keeps an evaluation to the few rules of that kind (regorus walks an else chain
# branch by branch, and most guest requests are space reads). The hot branches read the
# input's facts directly: each rule an evaluation passes through costs regorus 2–3 µs.
guest_decision := guest_deny("guest_access_expired", 403) if {
	input.user.expired == true
} else := space_decision if {
	space_families[input.route.family]
} else := guest_deny("guest_blocked_family", 403) if {
	guest_blocked_families[input.route.family]
} else := guest_deny("incomplete_facts", 403) if {
	# Every branch below may allow: each stands on the facts being there and well formed
	# (the space branch above states what it needs itself).
	not input.user.expired == false
} else := guest_deny("incomplete_facts", 403) if {
	# Through a rule: OPA reads `not is_array(x)` with `x` undefined as not satisfied,
	# regorus as satisfied; `not <rule>` means the same in both.
	not permissions_listed
} else := listing_decision if {
	input.route.family == "search"
} else := guest_allow("guest_ui") if {
	guest_ui_families[input.route.family]
} else := profile_decision if {
	input.route.family == "user_profile"
} else := guest_deny("guest_default_deny", 403)

# Cross-space listings only where the gateway cuts them down to viewable_spaces.
listing_decision := guest_allow("guest_filtered_listing") if {
	input.route.filtered == true
} else := guest_deny("guest_unfiltered_listing", 403)

profile_decision := guest_allow("own_profile") if {
	lower(input.route.user) == lower(input.user.name)
} else := guest_allow("shared_space_profile") if {
	shares_space_with(input.route.user)
} else := guest_deny("profile_not_shared", 403)

space_decision := guest_deny("space_unresolved", 403) if {
	not is_string(input.route.space)
} else := guest_deny("space_not_granted", 403) if {
	count(input.user.permissions) == 0
} else := guest_allow("guest_space_permission") if {
	# The one allowing branch states every fact it needs, so a missing or malformed fact
	# can only deny, in regorus and in OPA alike.
	input.user.expired == false
	input.route.action in input.user.permissions
	# Defence in depth: the gateway never lists `admin` in the permissions.
	grantable[input.route.action]
} else := guest_deny(concat("", ["missing_permission_", input.route.action]), 403)

# Spaces whose items a guest's listings keep (the filter_spaces rewrite asks this rule,
# `policy.listing_query`): those where the guest holds `view`.
viewable_spaces contains upper(key) if {
	guest
	not guest_user_expired
	some key, space in data.spaces
	some g in active_groups
	"view" in active_permissions(space.guests.groups[g])
}

viewable_spaces contains upper(key) if {
	guest
	not guest_user_expired
	some key, space in data.spaces
	"view" in active_permissions(space.guests.users[input.user.name])
}

# Guests see the profiles of the users they share a space with, as far as the directory
# knows them: users and groups with guest grants on a space the guest can view. Members of
# a space through the wiki's own permissions are not known to the gateway.
shares_space_with(other) if {
	some key in viewable_spaces
	data.spaces[key].guests.users[other]
}

shares_space_with(other) if {
	some key in viewable_spaces
	some m in data.users[other].groups
	data.spaces[key].guests.groups[membership_group(m)]
}

# A guest by the guest rule: declared guest groups only. One declared regular group makes a
# user regular; groups the directory does not declare are ignored, so a user with none
# declared is neither (and refused, unless identity.unknown_users = "guest"). The gateway
# applies the rule to the user's effective groups (input.user.guest, input.user.regular).
guest if input.user.guest == true

guest_flag := true if guest

else := false

allow(reason) := {"allow": true, "reason": reason, "guest": guest_flag, "status": 200}

deny(reason, status) := {"allow": false, "reason": reason, "guest": guest_flag, "status": status}

# Past the `not guest` branch the caller is known to be a guest: no need to evaluate
# guest_flag's else chain again.
guest_allow(reason) := {"allow": true, "reason": reason, "guest": true, "status": 200}

guest_deny(reason, status) := {"allow": false, "reason": reason, "guest": true, "status": status}

guest_user_expired if input.user.expired == true

permissions_listed if is_array(input.user.permissions)

# The user's groups whose grants count now. A directory membership is a group name or
# {"group": "...", "expires": "<RFC 3339>"}; once it has lapsed, that group's grants stop
# counting for the user, even when the token still names the group (the directory's expiry
# is the administrator's decision). The group still makes the user a guest: a lapsed guest
# never becomes a regular user.
active_groups contains g if {
	some g in input.user.groups
	not membership_lapsed(g)
}

membership_lapsed(g) if {
	some m in data.users[input.user.name].groups
	is_object(m)
	m.group == g
	expired(m)
}

membership_group(m) := m if is_string(m)

membership_group(m) := m.group if is_object(m)

# A grant is a list of permissions, or {"permissions": [...], "expires": "<RFC 3339>"}.
active_permissions(grant) := {p | some p in grant; grantable[p]} if is_array(grant)

active_permissions(grant) := {p | some p in grant.permissions; grantable[p]} if {
	is_object(grant)
	not expired(grant)
}

expired(grant) if time.now_ns() >= time.parse_rfc3339_ns(grant.expires)
