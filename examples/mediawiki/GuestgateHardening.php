<?php
/**
 * Wiki-side settings for MediaWiki namespaces used as guestgate spaces.
 *
 * guestgate decides each request by the namespace of the title the request names. The wiki
 * itself can still bring another namespace's content into a page of a granted one; these
 * settings stop the ways it does so on its own:
 * - transclusion of space namespaces (`{{:HR:Salaries}}`, `{{msgnw:HR:Salaries}}`):
 *   $wgNonincludableNamespaces gets every space namespace and its talk namespace. (Pages of
 *   a space then cannot transclude pages of the same space either: MediaWiki has no
 *   per-target setting.)
 * - transclusion through a redirect (`{{:Salaries}}`, where the main-namespace `Salaries`
 *   redirects to `HR:Salaries`): the parser follows up to two redirects and checks
 *   $wgNonincludableNamespaces on the first title only, so every hop is judged by the
 *   BeforeParserFetchTemplateRevisionRecord hook, which Parser::statelessFetchTemplate runs
 *   for each title it fetches.
 * - transclusion of special pages (`{{Special:ListUsers}}`, `{{Special:RecentChanges}}`):
 *   $wgAllowSpecialInclusion = false.
 * - redirects: for guests (guestgate sets `X-Guestgate-Guest: true`, and strips any copy a
 *   client sends), a redirect into another namespace is not followed; the redirect page
 *   itself is shown. Regular users are unaffected.
 *
 * Like the header login, this trusts guestgate's headers: the wiki must listen on loopback.
 *
 * Usage, in LocalSettings.php after the namespaces are defined:
 *   require_once '/path/to/examples/mediawiki/GuestgateHardening.php';
 *   GuestgateHardening::apply( [ NS_ENG, NS_HR, NS_OPS ] );   // the subject namespaces
 */

use MediaWiki\MediaWikiServices;

class GuestgateHardening {
	/**
	 * @param int[] $spaceNamespaces subject (even) namespace numbers used as spaces
	 */
	public static function apply( array $spaceNamespaces ) {
		global $wgNonincludableNamespaces, $wgAllowSpecialInclusion, $wgHooks, $wgExtensionCredits;
		// Named in the API's siteinfo (siprop=extensions): `guestgate audit` checks it is loaded.
		$wgExtensionCredits['other'][] = [
			'path' => __FILE__,
			'name' => 'GuestgateHardening',
			'description' => 'Keeps other namespaces out of pages guestgate lets guests see',
		];
		foreach ( $spaceNamespaces as $ns ) {
			$wgNonincludableNamespaces[] = $ns;
			$wgNonincludableNamespaces[] = $ns + 1;
		}
		$wgAllowSpecialInclusion = false;
		$wgHooks['InitializeArticleMaybeRedirect'][] = [ self::class, 'onInitializeArticleMaybeRedirect' ];
		$wgHooks['BeforeParserFetchTemplateRevisionRecord'][] =
			[ self::class, 'onBeforeParserFetchTemplateRevisionRecord' ];
	}

	/**
	 * Runs for each title a transclusion fetches, the hops of a redirect included: a title
	 * in a non-includable namespace is skipped (rendered as a link), whatever the first
	 * title was.
	 */
	public static function onBeforeParserFetchTemplateRevisionRecord(
		$contextTitle, $title, &$skip, &$revRecord
	) {
		global $wgNonincludableNamespaces;
		if ( in_array( $title->getNamespace(), $wgNonincludableNamespaces, true ) ) {
			$skip = true;
		}
		return true;
	}

	/**
	 * Runs before index.php follows a redirect page on view.
	 */
	public static function onInitializeArticleMaybeRedirect(
		$title, $request, &$ignoreRedirect, &$target, &$article
	) {
		if ( $request->getHeader( 'X-Guestgate-Guest' ) !== 'true' ) {
			return true;
		}
		$redirect = $article->getPage()->getRedirectTarget();
		if ( $redirect === null ) {
			return true;
		}
		$namespaces = MediaWikiServices::getInstance()->getNamespaceInfo();
		$same = !$redirect->isExternal()
			&& $namespaces->getSubject( $redirect->getNamespace() )
				=== $namespaces->getSubject( $title->getNamespace() );
		if ( !$same ) {
			$ignoreRedirect = true;
			$target = false;
		}
		return true;
	}
}
