<?xml version="1.0" encoding="utf-8"?>
<!--
  Shows an RSS 2.0 or Atom 1.0 feed as a readable page when it is opened in a browser.
  Feed readers ignore this stylesheet. Every text from the feed is written with
  xsl:value-of (escaped): titles and descriptions are shown as text, never as markup.
  Only http(s) and same-site links are made clickable. No scripts, no external resources.
-->
<xsl:stylesheet version="1.0"
    xmlns:xsl="http://www.w3.org/1999/XSL/Transform"
    xmlns:atom="http://www.w3.org/2005/Atom"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    exclude-result-prefixes="atom dc">

  <xsl:output method="html" encoding="utf-8" indent="yes"
      doctype-system="about:legacy-compat"/>

  <xsl:variable name="upper" select="'ABCDEFGHIJKLMNOPQRSTUVWXYZ'"/>
  <xsl:variable name="lower" select="'abcdefghijklmnopqrstuvwxyz'"/>

  <xsl:template match="/">
    <xsl:variable name="channel" select="rss/channel | atom:feed"/>
    <xsl:variable name="title" select="normalize-space(
        $channel/title | $channel/atom:title)"/>
    <xsl:variable name="lang" select="normalize-space(
        ($channel/language | atom:feed/@xml:lang)[1])"/>
    <html>
      <xsl:if test="$lang != ''">
        <xsl:attribute name="lang"><xsl:value-of select="$lang"/></xsl:attribute>
      </xsl:if>
      <head>
        <meta name="viewport" content="width=device-width, initial-scale=1"/>
        <meta name="color-scheme" content="light dark"/>
        <title>
          <xsl:value-of select="$title"/>
          <xsl:if test="$title = ''">Web feed</xsl:if>
        </title>
        <style>
          :root { color-scheme: light dark; --fg: #1f2328; --muted: #59636e; --bg: #fff;
                  --box: #eef4fb; --line: #d1d9e0; --link: #0a58ca; }
          @media (prefers-color-scheme: dark) {
            :root { --fg: #e6edf3; --muted: #9198a1; --bg: #0d1117; --box: #161f2c;
                    --line: #30363d; --link: #6cb6ff; }
          }
          * { box-sizing: border-box; }
          body { margin: 0; background: var(--bg); color: var(--fg);
                 font: 1rem/1.55 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
          main { max-width: 48rem; margin: 0 auto; padding: 1.5rem 1rem 3rem; }
          a { color: var(--link); }
          .about { background: var(--box); border: 1px solid var(--line); border-radius: .5rem;
                   padding: .75rem 1rem; font-size: .95rem; }
          .about p { margin: .25rem 0; }
          header h1 { margin: 1.5rem 0 .25rem; font-size: 1.8rem; line-height: 1.25;
                      overflow-wrap: anywhere; }
          header p { margin: .25rem 0; color: var(--muted); }
          h2 { font-size: 1.1rem; margin: 2rem 0 .5rem; color: var(--muted);
               text-transform: uppercase; letter-spacing: .04em; }
          ol { list-style: none; margin: 0; padding: 0; }
          li { padding: .75rem 0; border-top: 1px solid var(--line); }
          li h3 { margin: 0; font-size: 1.1rem; line-height: 1.35; overflow-wrap: anywhere; }
          li p { margin: .2rem 0 0; font-size: .9rem; color: var(--muted); }
          .untitled { font-style: italic; }
        </style>
      </head>
      <body>
        <main>
          <div class="about">
            <p><strong>This is a web feed</strong>, also known as a news feed (RSS or Atom).</p>
            <p>Subscribe by copying the URL from the address bar into your feed reader
              (for example a desktop, mobile or web-based reader such as NetNewsWire,
              Thunderbird, Feedly or Inoreader) to get new items as they are published.</p>
          </div>
          <xsl:apply-templates select="$channel"/>
        </main>
      </body>
    </html>
  </xsl:template>

  <!-- The feed: RSS channel or Atom feed. -->
  <xsl:template match="rss/channel | atom:feed">
    <xsl:variable name="title" select="normalize-space(title | atom:title)"/>
    <xsl:variable name="description" select="normalize-space(description | atom:subtitle)"/>
    <xsl:variable name="site" select="normalize-space((link | atom:link[@rel = 'alternate']/@href
        | atom:link[not(@rel)]/@href)[1])"/>
    <xsl:variable name="entries" select="item | atom:entry"/>
    <header>
      <h1>
        <xsl:value-of select="$title"/>
        <xsl:if test="$title = ''">Web feed</xsl:if>
      </h1>
      <xsl:if test="$description != '' and $description != $title">
        <p class="description"><xsl:value-of select="$description"/></p>
      </xsl:if>
      <xsl:if test="$site != ''">
        <p class="site">
          <xsl:call-template name="link">
            <xsl:with-param name="href" select="$site"/>
            <xsl:with-param name="text" select="concat('Visit the website: ', $site)"/>
          </xsl:call-template>
        </p>
      </xsl:if>
    </header>
    <h2>
      <xsl:text>Recent items (</xsl:text>
      <xsl:value-of select="count($entries)"/>
      <xsl:text>)</xsl:text>
    </h2>
    <ol class="items">
      <xsl:apply-templates select="$entries"/>
    </ol>
  </xsl:template>

  <!-- One item: RSS item or Atom entry. -->
  <xsl:template match="item | atom:entry">
    <xsl:variable name="title" select="normalize-space(title | atom:title)"/>
    <xsl:variable name="href" select="normalize-space((link | atom:link[@rel = 'alternate']/@href
        | atom:link[not(@rel)]/@href)[1])"/>
    <xsl:variable name="date">
      <xsl:choose>
        <xsl:when test="normalize-space(pubDate) != ''">
          <xsl:value-of select="normalize-space(pubDate)"/>
        </xsl:when>
        <xsl:when test="normalize-space(dc:date) != ''">
          <xsl:value-of select="normalize-space(dc:date)"/>
        </xsl:when>
        <xsl:when test="normalize-space(atom:published) != ''">
          <xsl:value-of select="normalize-space(atom:published)"/>
        </xsl:when>
        <xsl:otherwise><xsl:value-of select="normalize-space(atom:updated)"/></xsl:otherwise>
      </xsl:choose>
    </xsl:variable>
    <xsl:variable name="source" select="normalize-space(source | atom:source/atom:title)"/>
    <li class="item">
      <h3>
        <xsl:choose>
          <xsl:when test="$title = ''">
            <xsl:call-template name="link">
              <xsl:with-param name="href" select="$href"/>
              <xsl:with-param name="text" select="'(untitled)'"/>
              <xsl:with-param name="class" select="'untitled'"/>
            </xsl:call-template>
          </xsl:when>
          <xsl:otherwise>
            <xsl:call-template name="link">
              <xsl:with-param name="href" select="$href"/>
              <xsl:with-param name="text" select="$title"/>
            </xsl:call-template>
          </xsl:otherwise>
        </xsl:choose>
      </h3>
      <xsl:if test="$date != '' or $source != ''">
        <p class="meta">
          <xsl:if test="$date != ''">
            <time><xsl:value-of select="$date"/></time>
          </xsl:if>
          <xsl:if test="$date != '' and $source != ''"> · </xsl:if>
          <xsl:if test="$source != ''">
            <span class="source"><xsl:value-of select="$source"/></span>
          </xsl:if>
        </p>
      </xsl:if>
    </li>
  </xsl:template>

  <!-- A link if href is http(s) or a path on this site, else the text alone
       (a javascript: or data: link in a feed is never made clickable). -->
  <xsl:template name="link">
    <xsl:param name="href"/>
    <xsl:param name="text"/>
    <xsl:param name="class" select="''"/>
    <xsl:variable name="scheme" select="translate(substring-before($href, ':'), $upper, $lower)"/>
    <xsl:choose>
      <xsl:when test="$scheme = 'http' or $scheme = 'https'
          or starts-with($href, '/')">
        <a href="{$href}">
          <xsl:if test="$class != ''">
            <xsl:attribute name="class"><xsl:value-of select="$class"/></xsl:attribute>
          </xsl:if>
          <xsl:value-of select="$text"/>
        </a>
      </xsl:when>
      <xsl:otherwise>
        <span>
          <xsl:if test="$class != ''">
            <xsl:attribute name="class"><xsl:value-of select="$class"/></xsl:attribute>
          </xsl:if>
          <xsl:value-of select="$text"/>
        </span>
      </xsl:otherwise>
    </xsl:choose>
  </xsl:template>

</xsl:stylesheet>
