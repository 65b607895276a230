<?php
/**
 * Header login for MediaWiki behind guestgate: the request is logged in as the user named
 * in the `X-Remote-User` header, which guestgate sets (`upstream.user_header`) after it
 * verified the caller's token, and strips from anything a client sends.
 *
 * SAFE ONLY WHEN THE WIKI LISTENS ON LOOPBACK (or is otherwise reachable from guestgate
 * alone): anyone who can reach the wiki directly can send the header and be anyone. The
 * provider refuses requests whose peer is not a loopback address as a second line, but the
 * listener is the real guarantee (`php -S 127.0.0.1:PORT`, or `Listen 127.0.0.1` in Apache).
 *
 * Load it from LocalSettings.php:
 *   require_once '/path/to/examples/mediawiki/GuestgateHeaderSessionProvider.php';
 *   $wgSessionProviders[GuestgateHeaderSessionProvider::class] = [
 *       'class' => GuestgateHeaderSessionProvider::class,
 *       'args' => [ [ 'header' => 'X-Remote-User', 'priority' => 50 ] ],
 *   ];
 *   $wgGroupPermissions['*']['autocreateaccount'] = true; // users guestgate names are created
 *
 * The session id lives in a cookie whose name is derived from the user, so that a browser
 * that changes identity (another token) never resumes the other user's session: MediaWiki
 * would refuse the mismatch and fall back to anonymous.
 */

use MediaWiki\MediaWikiServices;
use MediaWiki\Session\ImmutableSessionProviderWithCookie;
use MediaWiki\Session\SessionInfo;
use MediaWiki\Session\UserInfo;
use MediaWiki\User\UserNameUtils;
use Wikimedia\IPUtils;

class GuestgateHeaderSessionProvider extends ImmutableSessionProviderWithCookie {
	/** @var string */
	private $header;

	public function __construct( $params = [] ) {
		parent::__construct( $params );
		$this->header = $params['header'] ?? 'X-Remote-User';
		$this->priority = $params['priority'] ?? SessionInfo::MAX_PRIORITY; // SessionProvider's own field
	}

	public function provideSessionInfo( WebRequest $request ) {
		$name = $request->getHeader( $this->header );
		if ( $name === false || trim( $name ) === '' ) {
			return null;
		}
		// Second line of defence: only a loopback peer (guestgate on the same host) is
		// believed. The first line is the wiki listening on loopback only.
		$peer = $_SERVER['REMOTE_ADDR'] ?? '';
		if ( !IPUtils::isValid( $peer ) || !( $peer === '::1' || IPUtils::isInRange( $peer, '127.0.0.0/8' ) ) ) {
			$this->logger->warning( 'guestgate header login refused: peer {peer} is not loopback', [ 'peer' => $peer ] );
			return null;
		}
		$canonical = MediaWikiServices::getInstance()->getUserNameUtils()
			->getCanonical( trim( $name ), UserNameUtils::RIGOR_CREATABLE );
		if ( $canonical === false ) {
			$this->logger->warning( 'guestgate header login refused: unusable user name {name}', [ 'name' => $name ] );
			return null;
		}
		// One cookie per user: see the class comment.
		$this->sessionCookieName = 'gg_session_' . substr( hash( 'sha256', $canonical ), 0, 16 );
		$id = $this->getSessionIdFromCookie( $request );
		return new SessionInfo( $this->priority, [
			'provider' => $this,
			'id' => $id,
			'userInfo' => UserInfo::newFromName( $canonical, true ),
			'persisted' => $id !== null,
			'forceUse' => true,
		] );
	}

	public function getVaryHeaders() {
		return [ $this->header => null ];
	}
}
