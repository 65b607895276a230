#!/usr/bin/env bash
# A real MediaWiki 1.39 (Debian's package) on SQLite, served by `php -S` on loopback, seeded
# with namespaces as spaces (ENG, HR, OPS), regular and guest users, and pages that mention
# users — for guestgate's end-to-end tests and for trying guestgate with a real wiki.
#
#   scripts/mediawiki.sh install # only the packages (apt), as .ci/run does
#   scripts/mediawiki.sh start   # installs (apt) if needed, installs the wiki, serves it
#   scripts/mediawiki.sh stop    # stops the wiki's own processes (by PID), removes its folder
#   scripts/mediawiki.sh status
#
# Environment: MW_PORT (default 8091), MW_DIR (default /tmp/guestgate-mediawiki: the
# throw-away folder with LocalSettings.php, the SQLite files, the PID file and the log),
# MW_NO_APT=1 to never install packages, MW_HOME (default /usr/share/mediawiki) where
# MediaWiki is installed. `start` prints `url=...` and `dir=...` last.
# It exits 3 when MediaWiki cannot be installed here (no apt, no packages), so callers
# can tell "not available" from "broken".
#
# The wiki trusts the X-Remote-User header (examples/mediawiki/): it listens on 127.0.0.1
# only, so that only guestgate on the same host can reach it.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MW_PORT="${MW_PORT:-8091}"
MW_DIR="${MW_DIR:-/tmp/guestgate-mediawiki}"
MW_HOME="${MW_HOME:-/usr/share/mediawiki}"
PIDFILE="$MW_DIR/php.pid"
PASSWORD="guestgate-demo-password-1"
MARKER=".made-by-guestgate-mediawiki-sh"

log() { echo "mediawiki.sh: $*" >&2; }

have_packages() {
  command -v php >/dev/null 2>&1 && [ -f "$MW_HOME/maintenance/install.php" ] || return 1
  # Read php -m whole (grep -q in a pipe could stop early, and pipefail would then fail).
  local modules
  modules="$(php -m 2>/dev/null)" || return 1
  grep -qi '^pdo_sqlite$' <<<"$modules"
}

install_packages() {
  have_packages && command -v curl >/dev/null 2>&1 && return 0
  if [ "${MW_NO_APT:-}" = 1 ] || ! command -v apt-get >/dev/null 2>&1; then
    log "MediaWiki is not installed at $MW_HOME, and apt-get is unavailable or MW_NO_APT=1"
    return 3
  fi
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo -n"
  # Tests start wikis in parallel: one installs, the others wait for it.
  if command -v flock >/dev/null 2>&1; then
    exec 9>"${TMPDIR:-/tmp}/guestgate-mediawiki-apt.lock"
    flock 9
    have_packages && command -v curl >/dev/null 2>&1 && return 0
  fi
  log "installing php8.2-cgi, mediawiki, php-cli, php-sqlite3 (apt)"
  export DEBIAN_FRONTEND=noninteractive
  # php8.2-cgi first: otherwise `mediawiki` pulls in Apache's PHP module through its
  # dependency on some PHP SAPI.
  { $sudo apt-get update -qq &&
    $sudo apt-get install -y -qq --no-install-recommends php8.2-cgi &&
    $sudo apt-get install -y -qq --no-install-recommends mediawiki php-cli php-sqlite3 curl; } >&2 || {
    log "apt-get could not install MediaWiki"
    return 3
  }
  have_packages || return 3
}

running() {
  [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

wait_ready() {
  for _ in $(seq 1 100); do
    running || { log "php -S exited; see $MW_DIR/php.log"; tail -20 "$MW_DIR/php.log" >&2 || true; return 1; }
    if curl -fsS -o /dev/null "http://127.0.0.1:$MW_PORT/api.php?action=query&meta=siteinfo&format=json" 2>/dev/null; then
      running && return 0
    fi
    sleep 0.2
  done
  log "the wiki did not answer on 127.0.0.1:$MW_PORT"
  return 1
}

maint() { MW_CONFIG_FILE="$MW_DIR/LocalSettings.php" php "$MW_HOME/maintenance/$1.php" "${@:2}"; }

edit() { # user title text
  printf '%s\n' "$3" | maint edit --user "$1" --summary "seeded by mediawiki.sh" "$2" >/dev/null
}

start() {
  if running; then
    log "already running (pid $(cat "$PIDFILE"))"
    echo "url=http://127.0.0.1:$MW_PORT"; echo "dir=$MW_DIR"
    return 0
  fi
  install_packages || exit 3
  command -v curl >/dev/null 2>&1 || { log "curl is required"; exit 3; }
  if curl -s -o /dev/null "http://127.0.0.1:$MW_PORT/" 2>/dev/null; then
    log "something already listens on 127.0.0.1:$MW_PORT (set MW_PORT)"
    exit 1
  fi
  if [ -e "$MW_DIR" ] && [ ! -e "$MW_DIR/$MARKER" ]; then
    log "$MW_DIR exists and was not made by this script; refusing to reuse it"
    exit 1
  fi
  rm -rf "$MW_DIR"
  mkdir -p "$MW_DIR/data" "$MW_DIR/cache" "$MW_DIR/tmp"
  touch "$MW_DIR/$MARKER"
  log "installing the wiki into $MW_DIR"
  php "$MW_HOME/maintenance/install.php" --quiet \
    --dbtype=sqlite --dbpath="$MW_DIR/data" --dbname=wiki \
    --server="http://127.0.0.1:$MW_PORT" --scriptpath="" \
    --lang=en --pass="$PASSWORD" --confpath="$MW_DIR" \
    "Guestgate Demo Wiki" Admin >"$MW_DIR/install.log" 2>&1 ||
    { cat "$MW_DIR/install.log" >&2; exit 1; }
  cat >>"$MW_DIR/LocalSettings.php" <<PHP

# ---- guestgate demo (scripts/mediawiki.sh) ----
# Links and redirects name the host the client used: guestgate passes it on as
# X-Forwarded-Host. Believed because the wiki listens on loopback only.
\$wgServer = 'http://' . ( \$_SERVER['HTTP_X_FORWARDED_HOST'] ?? '127.0.0.1:$MW_PORT' );
\$wgArticlePath = '/index.php/\$1';
\$wgCacheDirectory = '$MW_DIR/cache';
\$wgTmpDirectory = '$MW_DIR/tmp';
\$wgEnableUploads = false;
\$wgLogos = [ '1x' => '/resources/assets/mediawiki.png' ];
\$wgJobRunRate = 0;
\$wgShowExceptionDetails = true;
\$wgRCFeeds = [];
\$wgEnableEmail = false;

# Namespaces as spaces: each with its talk namespace.
define( 'NS_ENG', 3000 ); define( 'NS_ENG_TALK', 3001 );
define( 'NS_HR', 3002 );  define( 'NS_HR_TALK', 3003 );
define( 'NS_OPS', 3004 ); define( 'NS_OPS_TALK', 3005 );
\$wgExtraNamespaces[NS_ENG] = 'ENG'; \$wgExtraNamespaces[NS_ENG_TALK] = 'ENG_talk';
\$wgExtraNamespaces[NS_HR] = 'HR';   \$wgExtraNamespaces[NS_HR_TALK] = 'HR_talk';
\$wgExtraNamespaces[NS_OPS] = 'OPS'; \$wgExtraNamespaces[NS_OPS_TALK] = 'OPS_talk';
# No transclusion of other namespaces or special pages; guests do not follow redirects
# into other namespaces (docs/MEDIAWIKI.md).
require_once '$ROOT/examples/mediawiki/GuestgateHardening.php';
GuestgateHardening::apply( [ NS_ENG, NS_HR, NS_OPS ] );
\$wgNamespacesToBeSearchedDefault = [ NS_MAIN => true, NS_ENG => true, NS_HR => true, NS_OPS => true ];

# Who is who comes from guestgate (header login). Anonymous reads stay on: guestgate's
# content lookups (api.php?pageids=, ?revids=) ask anonymously, and guestgate itself forwards
# no anonymous request but to the profile's public routes (static files). Anyone who can
# reach this loopback listener directly could send X-Remote-User anyway.
require_once '$ROOT/examples/mediawiki/GuestgateHeaderSessionProvider.php';
\$wgSessionProviders[GuestgateHeaderSessionProvider::class] = [
  'class' => GuestgateHeaderSessionProvider::class,
  'args' => [ [ 'header' => 'X-Remote-User' ] ],
];
\$wgGroupPermissions['*']['read'] = true;
\$wgGroupPermissions['*']['edit'] = false;
\$wgGroupPermissions['*']['createaccount'] = false;
\$wgGroupPermissions['*']['autocreateaccount'] = true;
PHP

  log "seeding users and pages"
  for u in Alice Bob Gary Gina; do
    maint createAndPromote --force "$u" "$PASSWORD" >/dev/null
  done
  edit Admin "Main Page" "Welcome to the guestgate demo wiki. Spaces: [[ENG:Home]], [[HR:Salaries]], [[OPS:Runbook]]."
  edit Alice "ENG:Home" "Engineering home. Owner: [[User:Alice|Alice]]. Guest collaborator: [[User:Gary|Gary]].

The build pipeline keyword: pipelinealpha."
  edit Gary "ENG:Home" "Engineering home. Owner: [[User:Alice|Alice]]. Guest collaborator: [[User:Gary|Gary]].

The build pipeline keyword: pipelinealpha. Gary added a note."
  edit Alice "ENG:Roadmap" "Roadmap for 2027, reviewed with [[User:Gary]] and [[User:Bob]]. Shared keyword: quarterlyplan."
  edit Bob "ENG_talk:Home" "Talk about the engineering home page, with [[User:Gary]]."
  edit Alice "HR:Salaries" "Confidential salary bands. Secret keyword: quarterlyplan pipelinealpha salarybands."
  edit Bob "OPS:Runbook" "Operations runbook, on call: [[User:Bob]]. Keyword: quarterlyplan."
  edit Admin "User:Gary" "Gary is a guest from Acme."
  maint runJobs --quiet >/dev/null 2>&1 || true
  maint rebuildtextindex >/dev/null 2>&1 || true

  log "serving on 127.0.0.1:$MW_PORT"
  # Loopback only: the wiki believes X-Remote-User. The workers are children of this PID.
  ( cd "$MW_HOME" && MW_CONFIG_FILE="$MW_DIR/LocalSettings.php" PHP_CLI_SERVER_WORKERS=4 \
      exec php -S "127.0.0.1:$MW_PORT" -t "$MW_HOME" \
      >"$MW_DIR/php.log" 2>&1 ) &
  echo $! >"$PIDFILE"
  wait_ready || { stop; exit 1; }
  echo "url=http://127.0.0.1:$MW_PORT"
  echo "dir=$MW_DIR"
}

stop() {
  if [ -f "$PIDFILE" ]; then
    local pid
    pid="$(cat "$PIDFILE")"
    # php -S forks PHP_CLI_SERVER_WORKERS workers: stop them by their PIDs (children of
    # ours), then the parent. Nothing is matched by name.
    local kids
    kids="$(ps -o pid= --ppid "$pid" 2>/dev/null || true)"
    for k in $kids; do kill "$k" 2>/dev/null || true; done
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 25); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" $kids 2>/dev/null || true
    log "stopped (pid $pid)"
  fi
  # The folder is throw-away, but only ever removed when this script made it.
  if [ -e "$MW_DIR/$MARKER" ]; then
    rm -rf "$MW_DIR"
  fi
}

case "${1:-}" in
  install) install_packages ;;
  start) start ;;
  stop) stop ;;
  status) if running; then echo "running pid=$(cat "$PIDFILE") url=http://127.0.0.1:$MW_PORT"; else echo "stopped"; exit 1; fi ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
