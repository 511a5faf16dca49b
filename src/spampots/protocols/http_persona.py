"""What our HTTP answers look like: data only, rendered by ``http.py``.

* :data:`STYLES`: the proxy software we pretend to be (``Persona.http_style``):
  the headers it adds to a CONNECT answer and to relayed responses, and its
  own error page.
* :data:`JUDGE_LAYOUTS` and :data:`JUDGE_MARKERS`: proxy-judge pages
  (``Persona.judge_style``) and how a judge request is recognised.
* :data:`SITES`: well-known hosts that proxy checkers fetch through a proxy,
  with the traits the checkers look for. nmap's ``http-open-proxy`` and
  ``socks-open-proxy`` (``nselib/proxy.lua``) call a proxy open when the
  answer's status is 200/301/302 *and* a line matches their pattern: a header
  line starting ``Server: gws`` for www.google.com, "wikimedia" for
  www.wikipedia.org, "museum" for www.computerhistory.org. IP-echo and
  captive-portal checks expect the body formats below.
* :data:`GENERIC_SITES`: stock pages for any other host, picked by a stable
  hash of its name.

Templates use ``{name}`` placeholders filled by plain replacement (bodies hold
literal braces). ``{host}``: our host name (proxy pages) or the site's
(site pages); ``{port}``: the port we serve on; ``{ip}``: the address the far
end would see, i.e. ours; ``{code}``/``{reason}``: the status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

Headers = tuple[tuple[str, str], ...]

HTML = "text/html; charset=utf-8"
TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Page:
    status: int = 200
    content_type: str = HTML
    body: str = ""


@dataclass(frozen=True, slots=True)
class Head:
    """How a product lays out one kind of its own answers, when it differs from ours.

    ``headers`` are in the product's order; an empty value on Date, Content-Type,
    Content-Length or Connection marks where the renderer puts that field (one not
    listed is not sent). Values are templates: ``{server}``, ``{host}``, ``{port}``,
    ``{version}``, ``{error}``.
    """

    version: str = "HTTP/1.1"  # of the status line; "": no status line or headers, the body alone
    reason: str = ""  # "": the standard phrase
    headers: Headers = ()


@dataclass(frozen=True, slots=True)
class ProxyStyle:
    server: str  # Server header of the proxy's own answers ({version}: its release, personas.VERSIONS)
    connect_headers: Headers = ()  # after the connect_line
    relay_headers: Headers = ()  # added to every response relayed from an origin
    error_headers: Headers = ()  # extra headers on the proxy's own error answers
    error_content_type: str = HTML
    error_page: str = ""
    # answer to an origin-form request (a browser or scanner visiting the proxy
    # itself); None: the error page with 400, as a forward proxy does
    self_page: Optional[Page] = None
    error_head: Optional[Head] = None  # the product's own layout of its errors
    self_head: Optional[Head] = None  # ... and of its self_page
    # error names ({error}) and pages by what went wrong: "visit" (an origin-form request to
    # the proxy itself), "garbage" (not HTTP at all); others use "" and error_page
    error_names: dict[str, str] = field(default_factory=dict)
    error_pages: dict[str, str] = field(default_factory=dict)
    connect_line: str = "HTTP/1.1 200 Connection established"
    relay_first: bool = False  # relay_headers go right after the status line (else last)


# Squid as Debian ships it (5.7): the English templates, the stylesheet as Squid embeds
# it, the footer dated. Measured against the real one (tests/test_personas_real.py).
_SQUID = "squid/{version}"
# Squid embeds its stylesheet (Debian: /etc/squid/errorpage.css) in every error page.
_SQUID_CSS = """
 /*
 * Copyright (C) 1996-2022 The Squid Software Foundation and contributors
 *
 * Squid software is distributed under GPLv2+ license and includes
 * contributions from numerous individuals and organizations.
 * Please see the COPYING and CONTRIBUTORS files for details.
 */

/*
 Stylesheet for Squid Error pages
 Adapted from design by Free CSS Templates
 http://www.freecsstemplates.org
 Released for free under a Creative Commons Attribution 2.5 License
*/

/* Page basics */
* {
\tfont-family: verdana, sans-serif;
}

html body {
\tmargin: 0;
\tpadding: 0;
\tbackground: #efefef;
\tfont-size: 12px;
\tcolor: #1e1e1e;
}

/* Page displayed title area */
#titles {
\tmargin-left: 15px;
\tpadding: 10px;
\tpadding-left: 100px;
\tbackground: url('/squid-internal-static/icons/SN.png') no-repeat left;
}

/* initial title */
#titles h1 {
\tcolor: #000000;
}
#titles h2 {
\tcolor: #000000;
}

/* special event: FTP success page titles */
#titles ftpsuccess {
\tbackground-color:#00ff00;
\twidth:100%;
}

/* Page displayed body content area */
#content {
\tpadding: 10px;
\tbackground: #ffffff;
}

/* General text */
p {
}

/* error brief description */
#error p {
}

/* some data which may have caused the problem */
#data {
}

/* the error message received from the system or other software */
#sysmsg {
}

pre {
}

/* special event: FTP / Gopher directory listing */
#dirmsg {
    font-family: courier, monospace;
    color: black;
    font-size: 10pt;
}
#dirlisting {
    margin-left: 2%;
    margin-right: 2%;
}
#dirlisting tr.entry td.icon,td.filename,td.size,td.date {
    border-bottom: groove;
}
#dirlisting td.size {
    width: 50px;
    text-align: right;
    padding-right: 5px;
}

/* horizontal lines */
hr {
\tmargin: 0;
}

/* page displayed footer area */
#footer {
\tfont-size: 9px;
\tpadding-left: 10px;
}


body
:lang(fa) { direction: rtl; font-size: 100%; font-family: Tahoma, Roya, sans-serif; float: right; }
:lang(he) { direction: rtl; }
 """
_SQUID_HEAD = """<!DOCTYPE html PUBLIC "-//W3C//DTD HTML 4.01//EN" "http://www.w3.org/TR/html4/strict.dtd">
<html><head>
<meta type="copyright" content="Copyright (C) 1996-2021 The Squid Software Foundation and contributors">
<meta http-equiv="Content-Type" content="text/html; charset=utf-8">
<title>ERROR: The requested URL could not be retrieved</title>
<style type="text/css"><!-- """ + _SQUID_CSS + """--></style>
</head><body id={error}>
<div id="titles">
<h1>ERROR</h1>
<h2>The requested URL could not be retrieved</h2>
</div>
<hr>

<div id="content">
"""
_SQUID_FOOT = """
<p>Your cache administrator is <a href="mailto:webmaster">webmaster</a>.</p>
<br>
</div>

<hr>
<div id="footer">
<p>Generated {date} by {host} (squid/{version})</p>
<!-- {error} -->
</div>
</body></html>
"""
_SQUID_INVALID_URL = _SQUID_HEAD + """<p>The following error was encountered while trying to retrieve the URL: <a href="{url}">{url}</a></p>

<blockquote id="error">
<p><b>Invalid URL</b></p>
</blockquote>

<p>Some aspect of the requested URL is incorrect.</p>

<p>Some possible problems are:</p>
<ul>
<li><p>Missing or incorrect access protocol (should be <q>http://</q> or similar)</p></li>
<li><p>Missing hostname</p></li>
<li><p>Illegal double-escape in the URL-Path</p></li>
<li><p>Illegal character in hostname; underscores are not allowed.</p></li>
</ul>
""" + _SQUID_FOOT
_SQUID_PROTOCOL_UNKNOWN = _SQUID_HEAD + """<p>The following error was encountered while trying to retrieve the URL: <a href="error:invalid-request">error:invalid-request</a></p>

<blockquote id="error">
<p><b>Unsupported Protocol</b></p>
</blockquote>

<p>Squid does not support some access protocols. For example, the SSH protocol is currently not supported.</p>
""" + _SQUID_FOOT
_SQUID_ERROR = _SQUID_HEAD + """<p><b>Invalid Request</b> error was encountered while trying to process the request:</p>

<p>Some possible problems are:</p>
<ul>
<li id="missing-method"><p>Missing or unknown request method.</p></li>
<li id="missing-url"><p>Missing URL.</p></li>
<li id="missing-protocol"><p>Missing HTTP Identifier (HTTP/1.0).</p></li>
<li><p>Request is too large.</p></li>
<li><p>Content-Length missing for POST or PUT requests.</p></li>
<li><p>Illegal character in hostname; underscores are not allowed.</p></li>
<li><p>HTTP/1.1 <q>Expect:</q> feature is being asked from an HTTP/1.0 software.</p></li>
</ul>
""" + _SQUID_FOOT

# tinyproxy 1.11 as Debian ships it: HTTP/1.0 errors without Date or Content-Length.
_TINYPROXY = "tinyproxy/{version}"
_TINYPROXY_ERROR = """<?xml version="1.0" encoding="UTF-8" ?>
<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.1//EN" "http://www.w3.org/TR/xhtml11/DTD/xhtml11.dtd">
<html>
<head><title>{code} {reason}</title></head>
<body>
<h1>{reason}</h1>
<p>{detail}</p>
<hr />
<p><em>Generated by tinyproxy version {version}.</em></p>
</body>
</html>
"""

_APACHE = "Apache/{version} (Debian)"
_APACHE_ERROR = """<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN">
<html><head>
<title>{code} {reason}</title>
</head><body>
<h1>{reason}</h1>
<p>Your browser sent a request that this server could not understand.<br />
</p>
<hr>
<address>Apache/{version} (Debian) Server at {host} Port {port}</address>
</body></html>
"""
_APACHE_ITWORKS = """<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">
<html xmlns="http://www.w3.org/1999/xhtml">
  <head>
    <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
    <title>Apache2 Debian Default Page: It works</title>
  </head>
  <body>
    <div class="main_page">
      <div class="page_header floating_element">
        <span class="floating_element">Apache2 Debian Default Page</span>
      </div>
      <div class="content_section floating_element">
        <div class="section_header section_header_red">It works!</div>
        <p>This is the default welcome page used to test the correct operation of the Apache2 server
        after installation on Debian systems.</p>
      </div>
    </div>
  </body>
</html>
"""

_CCPROXY_ERROR = """<HTML><HEAD><TITLE>CCProxy</TITLE>
<META http-equiv=Content-Type content="text/html; charset=iso-8859-1"></HEAD>
<BODY><H2>{code} {reason}</H2>
<P>The request could not be understood by the proxy server.</P>
<HR><ADDRESS>CCProxy 8.0</ADDRESS></BODY></HTML>
"""

_WINGATE_ERROR = """<HTML><HEAD><TITLE>{code} {reason}</TITLE></HEAD>
<BODY><H1>{reason}</H1><P>The request could not be understood by WinGate.</P>
<HR><ADDRESS>WinGate {version}</ADDRESS></BODY></HTML>
"""

_PROXYPLUS_ERROR = """<html><head><title>Proxy+ - {code} {reason}</title></head>
<body bgcolor="#FFFFFF"><h2>{code} {reason}</h2>
<p>The request sent to Proxy+ was not valid.</p>
<hr><i>Proxy+ 5.00 www.proxyplus.cz</i></body></html>
"""

# AnalogX Proxy answers what it cannot serve with a bare HTML page, no status line
# (nmap-service-probes: "AnalogX web proxy").
_ANALOGX_ERROR = ('<HTML><BODY bgColor=#FFFFFF link=#0000CC text=#000000 vLink=#CCCC88><TITLE>An error has '
                  'occurred...</TITLE><CENTER><TABLE width=600 border=0 cellpadding=2 cellspacing=1><TR '
                  'bgcolor=#FFFFFF vAlign=top><TD width="90%" colspan=2 bgcolor=#707888><FONT face=Arial '
                  'color=#FFFFFF size=2><B>AnalogX Proxy</B></FONT></TD></TR><TR><TD colspan=2><FONT face=Arial '
                  'size=2><BR>The requested item could not be retrieved: the request was not understood.'
                  '<BR><BR></FONT></TD></TR></TABLE></CENTER></BODY></HTML>')

STYLES: dict[str, ProxyStyle] = {
    "squid": ProxyStyle(
        server=_SQUID,
        relay_headers=(
            ("X-Cache", "MISS from {host}"),
            ("X-Cache-Lookup", "MISS from {host}:{port}"),
            ("Via", "1.1 {host} (squid/{version})"),
        ),
        error_content_type="text/html;charset=utf-8",
        error_page=_SQUID_ERROR,
        error_head=Head(headers=(
            ("Server", "{server}"), ("Mime-Version", "1.0"), ("Date", ""), ("Content-Type", ""),
            ("Content-Length", ""), ("X-Squid-Error", "{error} 0"), ("Vary", "Accept-Language"),
            ("Content-Language", "en"), ("X-Cache", "MISS from {host}"),
            ("X-Cache-Lookup", "NONE from {host}:{port}"), ("Via", "1.1 {host} (squid/{version})"),
            ("Connection", ""),
        )),
        error_names={"visit": "ERR_INVALID_URL", "garbage": "ERR_PROTOCOL_UNKNOWN", "": "ERR_INVALID_REQ"},
        error_pages={"visit": _SQUID_INVALID_URL, "garbage": _SQUID_PROTOCOL_UNKNOWN},
    ),
    "tinyproxy": ProxyStyle(
        server=_TINYPROXY,
        connect_headers=(("Proxy-agent", _TINYPROXY),),
        connect_line="HTTP/1.0 200 Connection established",
        relay_headers=(("Via", "1.1 {host} (tinyproxy/{version})"),),
        relay_first=True,
        error_content_type="text/html",
        error_page=_TINYPROXY_ERROR,
        error_head=Head(version="HTTP/1.0", headers=(
            ("Server", "{server}"), ("Content-Type", ""), ("Connection", ""))),
        error_names={"visit": "You tried to connect to the machine the proxy is running on",
                     "": "Request has an invalid format"},
    ),
    "apache": ProxyStyle(
        server=_APACHE,
        connect_headers=(("Proxy-agent", _APACHE),),
        relay_headers=(("Via", "1.1 {host}"),),
        error_content_type="text/html; charset=iso-8859-1",
        error_page=_APACHE_ERROR,
        self_page=Page(200, "text/html", _APACHE_ITWORKS),
    ),
    # CCProxy asks a visitor of its own port for the account its web admin wants
    # (nmap-service-probes: "CCProxy http proxy"); proxy requests pass.
    "ccproxy": ProxyStyle(
        server="CCProxy",
        connect_headers=(("Proxy-agent", "CCProxy"),),
        error_content_type="text/html",
        error_page=_CCPROXY_ERROR,
        self_page=Page(401, "text/html", "<Html><Body><H1> Unauthorized ...</H1></Body></Html>"),
        self_head=Head(version="HTTP/1.0", headers=(
            ("Server", "CCProxy"), ("WWW-Authenticate", 'Basic realm="CCProxy Authorization"'),
            ("Content-Type", ""), ("Content-Length", ""), ("Connection", ""))),
    ),
    "analogx": ProxyStyle(
        server="AnalogX Proxy 4.15",
        error_content_type="text/html",
        error_page=_ANALOGX_ERROR,
        error_head=Head(version=""),
    ),
    # Proxy+ (Fortech) on its HTTP proxy port asks a visitor for its account
    # (nmap-service-probes: "Proxy+ http proxy").
    "proxyplus": ProxyStyle(
        server="Proxy+ 5.00",
        connect_headers=(("Proxy-agent", "Proxy+ 5.00"),),
        relay_headers=(("Via", "1.0 {host} (Proxy+ 5.00)"),),
        error_content_type="text/html",
        error_page=_PROXYPLUS_ERROR,
        self_page=Page(407, "text/html", "<html><body><h3>Proxy authentication required</h3></body></html>"),
        self_head=Head(version="HTTP/1.0", reason="Proxy Authentication required", headers=(
            ("Date", ""), ("Content-Type", ""), ("Proxy-Authenticate", 'Basic realm="Proxy+ HTTP Proxy service"'),
            ("Content-Length", ""), ("Connection", ""))),
    ),
    # WinGate serves HTTP and SOCKS on one port (nmap-service-probes: "WinGate httpd").
    "wingate": ProxyStyle(
        server="WinGate {version}",
        connect_headers=(("Proxy-agent", "WinGate {version}"),),
        error_content_type="text/html",
        error_page=_WINGATE_ERROR,
        error_head=Head(reason="Malformed Request", headers=(
            ("Server", "{server}"), ("Date", ""), ("Content-Type", ""), ("Content-Length", ""), ("Connection", ""))),
    ),
}


# --- proxy judges ----------------------------------------------------------

#: Substrings of "host/path" (lower case) that mark a request for a proxy-judge page.
JUDGE_MARKERS: tuple[str, ...] = (
    "azenv", "judge", "prxjdg", "env.php", "proxycheck", "proxy-check", "proxy_check",
    "checkproxy", "showenv", "printenv", "headers.php", "header.php", "echo.php", "anonymity",
)


@dataclass(frozen=True, slots=True)
class JudgeLayout:
    content_type: str
    head: str
    line: str  # per variable: {name}, {value}
    tail: str
    html: bool  # values are HTML-escaped


JUDGE_LAYOUTS: dict[str, JudgeLayout] = {
    # the layout of azenv.php, the judge most checkers ship with
    "azenv": JudgeLayout(
        content_type="text/html; charset=UTF-8",
        head="<html>\n<head>\n<title>AZ Environment variables 1.04</title>\n</head>\n<body>\n<pre>\n",
        line="{name} = {value}\n",
        tail="</pre>\n</body>\n</html>\n",
        html=True,
    ),
    "plain": JudgeLayout(content_type="text/plain", head="", line="{name}: {value}\n", tail="", html=False),
    "table": JudgeLayout(
        content_type="text/html; charset=UTF-8",
        head="<!DOCTYPE html>\n<html><head><title>Proxy Judge</title></head>\n<body>\n"
             "<table border=\"1\" cellpadding=\"3\">\n<tr><th>Variable</th><th>Value</th></tr>\n",
        line="<tr><td>{name}</td><td>{value}</td></tr>\n",
        tail="</table>\n</body></html>\n",
        html=True,
    ),
}

#: Response headers of a judge host (a stock Apache with PHP, as judges are).
JUDGE_HEADERS: Headers = (("Server", "Apache"), ("X-Powered-By", "PHP/7.4.33"), ("Vary", "Accept-Encoding"))


# --- well-known sites ------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Site:
    headers: Headers  # in the site's order, Server included; no Content-Type/Length
    pages: dict[str, Page] = field(default_factory=dict)  # path (no query) -> page; "*": any other


NOT_FOUND = Page(404, HTML, "<html>\n<head><title>404 Not Found</title></head>\n<body>\n"
                 "<center><h1>404 Not Found</h1></center>\n</body>\n</html>\n")

_GOOGLE_HOME = (
    '<!doctype html><html itemscope="" itemtype="http://schema.org/WebPage" lang="en"><head>'
    '<meta content="Search the world\'s information, including webpages, images, videos and more. '
    'Google has many special features to help you find exactly what you\'re looking for." name="description">'
    '<meta content="noodp" name="robots"><meta content="text/html; charset=UTF-8" http-equiv="Content-Type">'
    '<meta content="/images/branding/googleg/1x/googleg_standard_color_128dp.png" itemprop="image">'
    '<title>Google</title></head><body bgcolor="#fff"><center><br clear="all" id="lgpd">'
    '<div id="lga"><img alt="Google" height="92" src="/images/branding/googlelogo/1x/'
    'googlelogo_white_background_color_272x92dp.png" style="padding:28px 0 14px" width="272" id="hplogo"></div>'
    '<form action="/search" name="f"><table cellpadding="0" cellspacing="0"><tr valign="top"><td width="25%">'
    '&nbsp;</td><td align="center" nowrap=""><input name="ie" value="ISO-8859-1" type="hidden">'
    '<input class="lst" autocomplete="off" maxlength="2048" name="q" size="57" title="Google Search" value="">'
    '<br style="line-height:0"><span class="ds"><span class="lsbb"><input class="lsb" value="Google Search" '
    'name="btnG" type="submit"></span></span></td></tr></table></form></center></body></html>'
)
_GOOGLE = Site(
    headers=(
        ("Expires", "-1"),
        ("Cache-Control", "private, max-age=0"),
        ("P3P", 'CP="This is not a P3P policy! See g.co/p3phelp for more info."'),
        ("Server", "gws"),
        ("X-XSS-Protection", "0"),
        ("X-Frame-Options", "SAMEORIGIN"),
    ),
    pages={"/generate_204": Page(204, HTML, ""), "*": Page(200, "text/html; charset=ISO-8859-1", _GOOGLE_HOME)},
)
_GSTATIC = Site(headers=(("Server", "gws"),), pages={"/generate_204": Page(204, HTML, "")})

_WIKIPEDIA = Site(
    headers=(("Server", "ATS/9.2.5"), ("Vary", "Accept-Encoding"), ("Cache-Control", "s-maxage=86400, must-revalidate, max-age=3600")),
    pages={"*": Page(200, HTML, (
        '<!DOCTYPE html>\n<html lang="en" class="no-js">\n<head>\n<meta charset="utf-8">\n'
        '<title>Wikipedia</title>\n<meta name="description" content="Wikipedia is a free online encyclopedia, '
        'created and edited by volunteers around the world and hosted by the Wikimedia Foundation.">\n'
        '<link rel="preconnect" href="//upload.wikimedia.org">\n</head>\n<body id="www-wikipedia-org">\n'
        '<h1 class="central-textlogo-wrapper"><span class="central-textlogo__image">Wikipedia</span>'
        '<strong class="jsl10n localized-slogan">The Free Encyclopedia</strong></h1>\n'
        '<p class="site-license">This page is available under the Creative Commons Attribution-ShareAlike License. '
        'Wikipedia is hosted by the <a href="https://wikimediafoundation.org/">Wikimedia Foundation</a>, '
        'a non-profit organization.</p>\n</body>\n</html>\n'))},
)

_CHM = Site(
    headers=(("Server", "nginx"), ("X-Powered-By", "WP Engine"), ("Link", '<https://computerhistory.org/wp-json/>; rel="https://api.w.org/"')),
    pages={"*": Page(200, "text/html; charset=UTF-8", (
        '<!doctype html>\n<html lang="en-US">\n<head>\n<meta charset="UTF-8">\n'
        '<title>CHM | Computer History Museum</title>\n'
        '<meta name="description" content="The Computer History Museum is dedicated to the preservation and '
        'celebration of computer history.">\n</head>\n<body class="home page">\n'
        '<header><a class="logo" href="/">Computer History Museum</a></header>\n'
        '<main><h1>Decoding Technology\'s Impact on the Human Experience</h1>\n'
        '<p>Visit the museum in Mountain View, California.</p></main>\n</body>\n</html>\n'))},
)

_EXAMPLE = Site(
    headers=(("Age", "404843"), ("Cache-Control", "max-age=604800"), ("Etag", '"3147526947"'),
             ("Expires", "Thu, 01 Jan 2026 00:00:00 GMT"), ("Last-Modified", "Thu, 17 Oct 2019 07:18:26 GMT"),
             ("Server", "ECAcc (nyd/D184)"), ("Vary", "Accept-Encoding"), ("X-Cache", "HIT")),
    pages={"*": Page(200, "text/html; charset=UTF-8", (
        '<!doctype html>\n<html>\n<head>\n    <title>Example Domain</title>\n\n    <meta charset="utf-8" />\n'
        '    <meta http-equiv="Content-type" content="text/html; charset=utf-8" />\n'
        '    <meta name="viewport" content="width=device-width, initial-scale=1" />\n</head>\n\n<body>\n<div>\n'
        '    <h1>Example Domain</h1>\n    <p>This domain is for use in illustrative examples in documents. '
        'You may use this\n    domain in literature without prior coordination or asking for permission.</p>\n'
        '    <p><a href="https://www.iana.org/domains/example">More information...</a></p>\n</div>\n'
        '</body>\n</html>\n'))},
)


def _ip_echo(server: str, body: str, content_type: str = TEXT, path: str = "*") -> Site:
    """A what-is-my-IP or captive-portal check: a fixed tiny body (``{ip}``: the
    address it was reached from). ``server`` "" sends no Server header."""
    return Site(headers=(("Server", server),) if server else (), pages={path: Page(200, content_type, body)})


#: httpbin.org: /ip here; its echo endpoints (/get, /headers, /anything...) are built per request in http.py.
HTTPBIN_HEADERS: Headers = (("Server", "gunicorn/19.9.0"), ("Access-Control-Allow-Origin", "*"),
                            ("Access-Control-Allow-Credentials", "true"))
HTTPBIN_HOSTS = frozenset({"httpbin.org", "www.httpbin.org"})
_HTTPBIN = Site(headers=HTTPBIN_HEADERS, pages={"/ip": Page(200, "application/json", '{\n  "origin": "{ip}"\n}\n')})

SITES: dict[str, Site] = {
    "www.google.com": _GOOGLE,
    "google.com": _GOOGLE,
    "clients3.google.com": _GSTATIC,
    "connectivitycheck.gstatic.com": _GSTATIC,
    "www.gstatic.com": _GSTATIC,
    "www.wikipedia.org": _WIKIPEDIA,
    "wikipedia.org": _WIKIPEDIA,
    "en.wikipedia.org": _WIKIPEDIA,
    "www.computerhistory.org": _CHM,
    "computerhistory.org": _CHM,
    "example.com": _EXAMPLE,
    "www.example.com": _EXAMPLE,
    "example.org": _EXAMPLE,
    "www.example.org": _EXAMPLE,
    "example.net": _EXAMPLE,
    "www.example.net": _EXAMPLE,
    "api.ipify.org": _ip_echo("Cowboy", "{ip}"),
    "api4.ipify.org": _ip_echo("Cowboy", "{ip}"),
    "checkip.amazonaws.com": _ip_echo("", "{ip}\n", "text/plain;charset=UTF-8"),
    "icanhazip.com": _ip_echo("cloudflare", "{ip}\n"),
    "ipv4.icanhazip.com": _ip_echo("cloudflare", "{ip}\n"),
    "ifconfig.me": _ip_echo("istio-envoy", "{ip}"),
    "ifconfig.co": _ip_echo("cloudflare", "{ip}\n"),
    "ident.me": _ip_echo("nginx", "{ip}"),
    "v4.ident.me": _ip_echo("nginx", "{ip}"),
    "myexternalip.com": _ip_echo("nginx", "{ip}\n", path="/raw"),
    "wtfismyip.com": _ip_echo("nginx", "{ip}\n", path="/text"),
    "ipinfo.io": Site(headers=(("Server", "Google Frontend"),), pages={
        "/ip": Page(200, TEXT, "{ip}"),
        "*": Page(200, "application/json; charset=utf-8", '{\n  "ip": "{ip}"\n}'),
    }),
    "httpbin.org": _HTTPBIN,
    "www.httpbin.org": _HTTPBIN,
    "checkip.dyndns.org": _ip_echo("", "<html><head><title>Current IP Check</title></head>"
                                   "<body>Current IP Address: {ip}</body></html>\r\n", "text/html"),
    "checkip.dyndns.com": _ip_echo("", "<html><head><title>Current IP Check</title></head>"
                                   "<body>Current IP Address: {ip}</body></html>\r\n", "text/html"),
    "captive.apple.com": _ip_echo("", "<HTML><HEAD><TITLE>Success</TITLE></HEAD><BODY>Success</BODY></HTML>\n",
                                  "text/html"),
    "detectportal.firefox.com": _ip_echo("", "success\n", "text/plain", path="/success.txt"),
    "www.msftconnecttest.com": _ip_echo("", "Microsoft Connect Test", "text/plain", path="/connecttest.txt"),
    "www.msftncsi.com": _ip_echo("", "Microsoft NCSI", "text/plain", path="/ncsi.txt"),
}

#: Stock pages for every other host (``{host}`` is the requested name, escaped).
GENERIC_SITES: tuple[Site, ...] = (
    Site(headers=(("Server", "nginx"),), pages={"*": Page(200, "text/html", (
        "<!DOCTYPE html>\n<html>\n<head>\n<title>Welcome to nginx!</title>\n</head>\n<body>\n"
        "<h1>Welcome to nginx!</h1>\n<p>If you see this page, the nginx web server is successfully installed and\n"
        "working. Further configuration is required.</p>\n\n<p><em>Thank you for using nginx.</em></p>\n"
        "</body>\n</html>\n"))}),
    Site(headers=(("Server", "Apache"), ("Vary", "Accept-Encoding")), pages={"*": Page(200, "text/html; charset=UTF-8", (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{host}</title>\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n</head>\n<body>\n"
        "<h1>{host}</h1>\n<p>This site is under construction. Please check back soon.</p>\n</body>\n</html>\n"))}),
    Site(headers=(("Server", "cloudflare"), ("Vary", "Accept-Encoding")), pages={"*": Page(200, "text/html; charset=UTF-8", (
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>Home | {host}</title>\n"
        "</head>\n<body>\n<header><a href=\"/\">{host}</a></header>\n<main><h1>Welcome</h1>\n"
        "<p>Latest news and updates.</p></main>\n<footer>&copy; {host}</footer>\n</body>\n</html>\n"))}),
)
