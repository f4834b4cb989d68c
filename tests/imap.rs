//! IMAP against a real `mailmesh run`: Python's standard `imaplib` (a client no one here wrote)
//! logs in, lists, creates, selects and asks for status, as a mail client does; a raw socket
//! sends what a client library would not (oversize literals, malformed commands); Python's
//! `smtplib.LMTP` delivers the messages the mailbox then counts.

mod support;

use std::path::Path;
use std::process::Command;

use support::imap_node::ImapNode;
use support::mailmesh;

/// The Python side: one scenario per call, results as one JSON object on stdout.
const CLIENT: &str = r#"
import imaplib, json, smtplib, socket, ssl, sys

target, scenario = sys.argv[1], sys.argv[2]
args = sys.argv[3:]
host, port = target.rsplit(':', 1)
port = int(port)

def text(value):
    if isinstance(value, bytes):
        return value.decode('utf-8', 'replace')
    if isinstance(value, (list, tuple)):
        return [text(v) for v in value]
    return value

def attempt(call, *a):
    """[status, data] of an imaplib call; NO and BAD come back as ['NO', message]."""
    try:
        typ, data = call(*a)
        return [typ, text(data)]
    except imaplib.IMAP4.error as e:
        return ['ERROR', str(e)]

def raw_lines(sock, tag):
    """Lines read up to the tagged one."""
    lines, buf = [], b''
    while True:
        while b'\r\n' not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                lines.append('<closed>')
                return lines
            buf += chunk
        line, buf = buf.split(b'\r\n', 1)
        lines.append(line.decode('utf-8', 'replace'))
        if line.startswith(tag.encode() + b' '):
            return lines

class Lines:
    # Lines of a raw connection, read as they come (the socket's timeout, 30 s, is the deadline):
    # `until` waits for the first line a predicate accepts, `command` sends a tagged command and
    # returns every line up to its tagged answer.
    def __init__(self, sock):
        self.sock, self.buf = sock, b''
    def line(self):
        while b'\r\n' not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError('closed')
            self.buf += chunk
        line, self.buf = self.buf.split(b'\r\n', 1)
        return line.decode('utf-8', 'replace')
    def until(self, pred):
        seen = []
        try:
            while True:
                line = self.line()
                seen.append(line)
                if pred(line):
                    return seen
        except (socket.timeout, EOFError) as e:
            seen.append('<%s>' % type(e).__name__)
            return seen
    def command(self, tag, line):
        self.sock.sendall(('%s %s\r\n' % (tag, line)).encode())
        seen = []
        while True:
            l = self.line()
            seen.append(l)
            if l.startswith(tag + ' '):
                return seen

out = {}
if scenario == 'session':
    lmtp_host, lmtp_port = args[0].rsplit(':', 1)
    lmtp = smtplib.LMTP(lmtp_host, int(lmtp_port), timeout=30)
    lmtp.ehlo('mta.example')
    for subject in ['one', 'two']:
        lmtp.mail('s@ext.example')
        lmtp.rcpt('alice@example.org')
        out['lmtp ' + subject] = lmtp.data(('Subject: %s\r\n\r\nbody\r\n' % subject).encode())[0]
    lmtp.quit()

    m = imaplib.IMAP4(host, port, timeout=30)
    out['welcome'] = text(m.welcome)
    out['capabilities'] = list(m.capabilities)
    out['wrong_password'] = attempt(m.login, 'alice', 'nope')
    out['unknown_user'] = attempt(m.login, 'mallory', 'secret')
    out['login'] = attempt(m.login, 'alice', 'secret')
    out['capability_after'] = attempt(m.capability)
    out['namespace'] = attempt(m.namespace)
    out['id'] = attempt(m.xatom, 'ID', '("name" "imaplib")')
    out['id_data'] = text(m.untagged_responses.pop('ID', None))
    out['enable'] = attempt(m.enable, 'CONDSTORE')
    out['create'] = attempt(m.create, 'Work/Reports')
    out['create_again'] = attempt(m.create, 'Work/Reports')
    out['create_trailing'] = attempt(m.create, 'Archive/')
    out['list_all'] = attempt(m.list, '""', '*')
    out['list_top'] = attempt(m.list, '""', '%')
    out['list_root'] = attempt(m.list, '""', '""')
    out['list_work'] = attempt(m.list, 'Work/', '%')
    out['subscribe'] = attempt(m.subscribe, 'Work')
    out['lsub'] = attempt(m.lsub, '""', '*')
    out['unsubscribe'] = attempt(m.unsubscribe, 'Work')
    out['lsub_after'] = attempt(m.lsub, '""', '*')
    out['status'] = attempt(m.status, 'INBOX', '(MESSAGES UNSEEN UIDNEXT UIDVALIDITY RECENT)')
    out['status_missing'] = attempt(m.status, 'Nope', '(MESSAGES)')
    out['select'] = attempt(m.select, 'INBOX')
    out['select_uidvalidity'] = text(m.response('UIDVALIDITY'))
    out['select_uidnext'] = text(m.response('UIDNEXT'))
    out['select_flags'] = text(m.response('FLAGS'))
    out['select_permanentflags'] = text(m.response('PERMANENTFLAGS'))
    out['select_highestmodseq'] = text(m.response('HIGHESTMODSEQ'))
    out['select_readwrite'] = text(m.response('READ-WRITE'))
    out['check'] = attempt(m.check)
    out['examine'] = attempt(m.select, 'Work/Reports', True)
    out['examine_readonly'] = text(m.response('READ-ONLY'))
    out['unselect'] = attempt(m.unselect)
    out['select_missing'] = attempt(m.select, 'Nope')
    out['rename'] = attempt(m.rename, 'Work', 'Projects')
    out['list_renamed'] = attempt(m.list, '""', '*')
    out['rename_inbox'] = attempt(m.rename, 'INBOX', 'Old')
    out['delete'] = attempt(m.delete, 'Projects/Reports')
    out['delete_inbox'] = attempt(m.delete, 'INBOX')
    out['delete_missing'] = attempt(m.delete, 'Projects/Reports')
    out['list_end'] = attempt(m.list)
    out['noop'] = attempt(m.noop)
    out['logout'] = attempt(m.logout)
    # Bob has had no delivery: INBOX is listed, and selecting it works (empty).
    b = imaplib.IMAP4(host, port, timeout=30)
    b.login('bob', 'secret')
    out['bob_list'] = attempt(b.list)
    out['bob_select'] = attempt(b.select, 'INBOX')
    out['bob_status'] = attempt(b.status, 'INBOX', '(MESSAGES UIDNEXT)')
    b.logout()
elif scenario == 'bad_input':
    s = socket.create_connection((host, port), timeout=30)
    s.recv(65536)
    # A synchronizing literal over the limit before a login: refused before a byte of it is
    # sent, and the connection goes on.
    s.sendall(b'a1 LOGIN {100000}\r\n')
    out['big_sync'] = raw_lines(s, 'a1')
    # LITERAL+: the literal comes regardless; read, thrown away, refused.
    s.sendall(b'a2 LOGIN {20000+}\r\n' + b'x' * 20000 + b' "secret"\r\n')
    out['big_nonsync'] = raw_lines(s, 'a2')
    s.sendall(b'a3 FROBNICATE\r\n')
    out['unknown'] = raw_lines(s, 'a3')
    s.sendall(b'a4 SELECT INBOX\r\n')
    out['wrong_state'] = raw_lines(s, 'a4')
    s.sendall(b'\r\n')
    s.sendall(b'a5 NOOP\r\n')
    out['empty_line_then_noop'] = raw_lines(s, 'a5')
    # A line far over the limit, with no literal: refused once it ends.
    s.sendall(b'a6 LOGIN ' + b'y' * 50000 + b' x\r\n')
    out['long_line'] = raw_lines(s, 'a6')
    # A synchronizing literal within the limit gets a continuation request.
    s.sendall(b'a7 LOGIN {5}\r\n')
    out['continuation'] = s.recv(65536).decode()
    s.sendall(b'alice "secret"\r\n')
    out['literal_login'] = raw_lines(s, 'a7')
    # AUTHENTICATE PLAIN without an initial response: an empty challenge, then "*" cancels.
    s.sendall(b'a8 LOGOUT\r\n')
    out['logout'] = raw_lines(s, 'a8')
    s2 = socket.create_connection((host, port), timeout=30)
    s2.recv(65536)
    s2.sendall(b'b1 AUTHENTICATE PLAIN\r\n')
    out['plain_challenge'] = s2.recv(65536).decode()
    s2.sendall(b'*\r\n')
    out['plain_cancel'] = raw_lines(s2, 'b1')
    import base64
    s2.sendall(b'b2 AUTHENTICATE PLAIN\r\n')
    s2.recv(65536)
    s2.sendall(base64.b64encode(b'\0alice\0secret') + b'\r\n')
    out['plain_continued'] = raw_lines(s2, 'b2')
    s2.sendall(b'b3 AUTHENTICATE PLAIN ' + base64.b64encode(b'\0alice\0secret') + b'\r\n')
    out['plain_twice'] = raw_lines(s2, 'b3')
elif scenario == 'messages':
    def body_of(data):
        """The literal of a FETCH answer (imaplib gives (head, literal) tuples)."""
        for item in data:
            if isinstance(item, tuple):
                return item[1].decode('utf-8', 'replace')
        return None
    def fetched(data):
        """Each FETCH line as text, literals left out."""
        return [text(item[0]) if isinstance(item, tuple) else text(item) for item in data if item is not None]
    lmtp_host, lmtp_port = args[0].rsplit(':', 1)
    lmtp = smtplib.LMTP(lmtp_host, int(lmtp_port), timeout=30)
    lmtp.ehlo('mta.example')
    lmtp.mail('s@ext.example')
    lmtp.rcpt('alice@example.org')
    out['lmtp'] = lmtp.data(b'Subject: delivered\r\nFrom: s@ext.example\r\n\r\nby LMTP\r\n')[0]
    lmtp.quit()

    m = imaplib.IMAP4(host, port, timeout=30)
    m.login('alice', 'secret')
    out['capabilities'] = list(m.capabilities)
    out['select'] = attempt(m.select, 'INBOX')
    out['fetch_delivered'] = attempt(m.fetch, '1', '(UID FLAGS BODY.PEEK[])')
    out['delivered_body'] = body_of(m.fetch('1', '(BODY.PEEK[])')[1])
    message = b'Subject: appended\r\nX-Folded: one\r\n two\r\n\r\nfirst line\r\nsecond line\r\n'
    out['append'] = attempt(m.append, 'INBOX', '(\\Flagged $Work)', '"02-Jan-2024 10:20:30 +0000"', message)
    out['noop_exists'] = [attempt(m.noop), text(m.response('EXISTS'))]
    out['fetch_meta'] = attempt(m.fetch, '1:*', '(UID FLAGS RFC822.SIZE INTERNALDATE)')
    out['modseq'] = attempt(m.fetch, '2', '(MODSEQ)')
    out['body'] = body_of(m.fetch('2', '(BODY.PEEK[])')[1])
    out['partial'] = body_of(m.fetch('2', '(BODY.PEEK[]<9.8>)')[1])
    out['partial_line'] = fetched(m.fetch('2', '(BODY.PEEK[]<9.8>)')[1])
    out['header'] = body_of(m.fetch('2', '(BODY.PEEK[HEADER])')[1])
    out['text'] = body_of(m.fetch('2', '(BODY.PEEK[TEXT])')[1])
    out['fields'] = body_of(m.fetch('2', '(BODY.PEEK[HEADER.FIELDS (x-folded)])')[1])
    out['rfc822_header'] = body_of(m.fetch('2', '(RFC822.HEADER)')[1])
    out['flags_after_peek'] = attempt(m.fetch, '2', '(FLAGS)')
    out['rfc822_text'] = body_of(m.fetch('2', '(RFC822.TEXT)')[1])
    out['flags_after_text'] = attempt(m.fetch, '2', '(FLAGS)')
    out['body_sets_seen'] = fetched(m.fetch('1', '(BODY[TEXT])')[1])
    out['out_of_range'] = attempt(m.fetch, '3', '(FLAGS)')
    out['uid_unknown'] = attempt(m.uid, 'FETCH', '99', '(FLAGS)')
    out['envelope'] = attempt(m.fetch, '1', '(ENVELOPE)')
    out['binary'] = attempt(m.fetch, '1', '(BINARY[1])')
    out['store_add'] = attempt(m.store, '1', '+FLAGS', '(\\Deleted $Done)')
    out['store_remove'] = attempt(m.store, '1', '-FLAGS', '(\\Deleted)')
    out['store_silent'] = attempt(m.store, '1', '+FLAGS.SILENT', '(\\Answered)')
    out['store_replace'] = attempt(m.uid, 'STORE', '2', 'FLAGS', '(\\Seen)')
    out['store_unchanged'] = attempt(m.xatom, 'STORE', '1:2', '(UNCHANGEDSINCE 1) +FLAGS', '(\\Draft)')
    m.send(b'q1 STORE 1 +FLAGS ("not an atom")\r\n')
    out['store_quoted'] = text(m.readline()).strip()
    out['flags_end'] = attempt(m.fetch, '1:*', '(FLAGS)')
    # Four more, then two of the six go: the numbers after each close up.
    for i in range(3, 7):
        m.append('INBOX', None, None, ('Subject: m%d\r\n\r\nbody %d\r\n' % (i, i)).encode())
    out['exists_six'] = [attempt(m.noop), text(m.response('EXISTS'))]
    m.store('2,4', '+FLAGS.SILENT', '(\\Deleted)')
    out['expunge'] = attempt(m.expunge)
    out['after_expunge'] = attempt(m.fetch, '1:*', '(UID)')
    m.store('3', '+FLAGS.SILENT', '(\\Deleted)')
    m.store('4', '+FLAGS.SILENT', '(\\Deleted)')
    out['uid_expunge'] = [attempt(m.uid, 'EXPUNGE', '5'), text(m.response('EXPUNGE'))]
    out['after_uid_expunge'] = attempt(m.fetch, '1:*', '(UID FLAGS)')
    out['copy_missing'] = attempt(m.copy, '1', 'Archive')
    out['append_missing'] = attempt(m.append, 'Nowhere', None, None, b'Subject: x\r\n\r\nx\r\n')
    out['create'] = attempt(m.create, 'Archive')
    out['copy'] = attempt(m.copy, '1:2', 'Archive')
    out['move'] = [attempt(m.xatom, 'MOVE', '1', 'Archive'), text(m.response('OK')), text(m.response('EXPUNGE'))]
    out['after_move'] = attempt(m.fetch, '1:*', '(UID)')
    out['copy_within'] = attempt(m.uid, 'COPY', '6', 'INBOX')
    out['exists_after_copy_within'] = [attempt(m.noop), text(m.response('EXISTS'))]
    out['archive_status'] = attempt(m.status, 'Archive', '(MESSAGES UIDNEXT)')
    out['select_archive'] = attempt(m.select, 'Archive')
    out['archive_uids'] = attempt(m.fetch, '1:*', '(UID FLAGS)')
    out['archive_body'] = body_of(m.fetch('1', '(BODY.PEEK[])')[1])
    m.store('1', '+FLAGS.SILENT', '(\\Deleted)')
    out['close'] = attempt(m.close)
    out['archive_after_close'] = attempt(m.status, 'Archive', '(MESSAGES)')
    out['examine'] = attempt(m.select, 'INBOX', True)
    out['examine_store'] = attempt(m.store, '1', '+FLAGS', '(\\Deleted)')
    out['examine_fetch'] = fetched(m.fetch('1', '(BODY[])')[1])
    out['examine_flags'] = attempt(m.fetch, '1', '(FLAGS)')
    out['examine_expunge'] = attempt(m.expunge)
    out['logout'] = attempt(m.logout)
elif scenario == 'two_sessions':
    a = imaplib.IMAP4(host, port, timeout=30)
    a.login('alice', 'secret')
    b = imaplib.IMAP4(host, port, timeout=30)
    b.login('alice', 'secret')
    for i in range(1, 4):
        a.append('INBOX', None, None, ('Subject: m%d\r\n\r\nbody\r\n' % i).encode())
    out['a_select'] = attempt(a.select, 'INBOX')
    out['b_select'] = attempt(b.select, 'INBOX')
    b.store('2', '+FLAGS.SILENT', '(\\Deleted)')
    out['b_expunge'] = attempt(b.expunge)
    out['b_append'] = attempt(b.append, 'INBOX', None, None, b'Subject: m4\r\n\r\nbody\r\n')
    # Session a still numbers by what it was told: no EXPUNGE during its FETCH, the new message
    # announced (EXISTS may come any time).
    out['a_fetch'] = attempt(a.fetch, '1:3', '(UID)')
    out['a_fetch_expunge'] = text(a.response('EXPUNGE'))
    out['a_fetch_exists'] = text(a.response('EXISTS'))
    out['a_noop'] = attempt(a.noop)
    out['a_noop_expunge'] = text(a.response('EXPUNGE'))
    out['a_after'] = attempt(a.fetch, '1:*', '(UID)')
    a.logout()
    b.logout()
elif scenario == 'append_limits':
    def login(tag):
        s = socket.create_connection((host, port), timeout=30)
        s.recv(65536)
        s.sendall(tag.encode() + b' LOGIN alice secret\r\n')
        raw_lines(s, tag)
        return s
    s = login('a0')
    # Over the command limit (limits.max_message_bytes + 64 KiB): a synchronizing literal is
    # refused before it is sent, a LITERAL+ one read, dropped and refused.
    s.sendall(b'a1 APPEND INBOX {200000}\r\n')
    out['big_sync'] = raw_lines(s, 'a1')
    s.sendall(b'a2 APPEND INBOX {200000+}\r\n' + b'x' * 200000 + b'\r\n')
    out['big_nonsync'] = raw_lines(s, 'a2')
    # Within the command limit but over limits.max_message_bytes: the store refuses it.
    big = b'Subject: big\r\n\r\n' + b'y' * 5000 + b'\r\n'
    s.sendall(b'a3 APPEND INBOX {%d+}\r\n' % len(big) + big + b'\r\n')
    out['over_message_limit'] = raw_lines(s, 'a3')
    small = b'Subject: small\r\n\r\nhi\r\n'
    s.sendall(b'a4 APPEND INBOX (\\Seen) {%d}\r\n' % len(small))
    out['continuation'] = s.recv(65536).decode()
    s.sendall(small + b'\r\n')
    out['small'] = raw_lines(s, 'a4')
    # An empty message, and a flag the store does not take: refused, nothing stored.
    s.sendall(b'a6 APPEND INBOX {0+}\r\n\r\n')
    out['empty'] = raw_lines(s, 'a6')
    s.sendall(b'a7 APPEND INBOX (\\Recent) {%d+}\r\n' % len(small) + small + b'\r\n')
    out['recent_flag'] = raw_lines(s, 'a7')
    # A client gone in the middle of its literal: nothing of that message is stored.
    s2 = login('b0')
    s2.sendall(b'b1 APPEND INBOX {500}\r\n')
    out['cut_continuation'] = s2.recv(65536).decode()
    s2.sendall(b'Subject: cut\r\n\r\n' + b'z' * 100)
    s2.close()
    s.sendall(b'a5 STATUS INBOX (MESSAGES)\r\n')
    out['status'] = raw_lines(s, 'a5')
elif scenario == 'starttls':
    context = ssl.create_default_context(cafile=args[0])
    context.check_hostname = False
    m = imaplib.IMAP4(host, port, timeout=30)
    out['capabilities'] = list(m.capabilities)
    out['login_plaintext'] = attempt(m.login, 'alice', 'secret')
    out['authenticate_plaintext'] = attempt(m.authenticate, 'PLAIN', lambda _: b'\0alice\0secret')
    out['starttls'] = attempt(m.starttls, context)
    out['tls_version'] = m.sock.version()
    out['capabilities_tls'] = list(m.capabilities)
    out['starttls_again'] = attempt(m.xatom, 'STARTTLS')
    out['login'] = attempt(m.login, 'alice', 'secret')
    out['list'] = attempt(m.list)
    out['logout'] = attempt(m.logout)
    # The implicit TLS listener: TLS from the first byte, no STARTTLS, a password taken.
    tls_host, tls_port = args[1].rsplit(':', 1)
    t = imaplib.IMAP4_SSL(tls_host, int(tls_port), ssl_context=context, timeout=30)
    out['implicit_tls_version'] = t.sock.version()
    out['implicit_capabilities'] = list(t.capabilities)
    out['implicit_authenticate'] = attempt(t.authenticate, 'PLAIN', lambda _: b'\0alice\0secret')
    out['implicit_logout'] = attempt(t.logout)
elif scenario == 'idle':
    b = imaplib.IMAP4(host, port, timeout=30)
    b.login('alice', 'secret')
    b.append('INBOX', None, None, b'Subject: first\r\n\r\nbody\r\n')
    s = socket.create_connection((host, port), timeout=30)
    r = Lines(s)
    r.line()
    out['capability'] = (s.sendall(b'c0 CAPABILITY\r\n'), r.until(lambda l: l.startswith('c0 ')))[1]
    s.sendall(b'a1 LOGIN alice secret\r\n')
    r.until(lambda l: l.startswith('a1 '))
    s.sendall(b'a2 SELECT INBOX\r\n')
    out['select'] = r.until(lambda l: l.startswith('a2 '))
    s.sendall(b'a3 IDLE\r\n')
    out['idle'] = r.until(lambda l: l.startswith('+'))
    # Another session's append, then a delivery by LMTP, each told while idling.
    out['b_append'] = attempt(b.append, 'INBOX', None, None, b'Subject: second\r\n\r\nbody\r\n')
    out['told_append'] = r.until(lambda l: l == '* 2 EXISTS')
    lmtp_host, lmtp_port = args[0].rsplit(':', 1)
    lmtp = smtplib.LMTP(lmtp_host, int(lmtp_port), timeout=30)
    lmtp.ehlo('mta.example')
    lmtp.mail('s@ext.example')
    lmtp.rcpt('alice@example.org')
    out['lmtp'] = lmtp.data(b'Subject: third\r\n\r\nbody\r\n')[0]
    lmtp.quit()
    out['told_delivery'] = r.until(lambda l: l == '* 3 EXISTS')
    # Another session's flag change and expunge.
    b.select('INBOX')
    b.store('1', '+FLAGS', '(\\Flagged)')
    out['told_flags'] = r.until(lambda l: 'FETCH' in l)
    b.store('2', '+FLAGS.SILENT', '(\\Deleted)')
    out['told_deleted'] = r.until(lambda l: 'FETCH' in l)
    out['b_expunge'] = attempt(b.expunge)
    out['told_expunge'] = r.until(lambda l: l == '* 2 EXPUNGE')
    s.sendall(b'DONE\r\n')
    out['done'] = r.until(lambda l: l.startswith('a3 '))
    # After the IDLE, the session numbers as it was told: 2 messages, uids 1 and 3.
    s.sendall(b'a4 FETCH 1:* (UID FLAGS)\r\n')
    out['fetch'] = r.until(lambda l: l.startswith('a4 '))
    # Its own silent STORE is not told back at NOOP; another session's change is.
    s.sendall(b'a5 STORE 1 +FLAGS.SILENT (\\Seen)\r\n')
    out['own_silent'] = r.until(lambda l: l.startswith('a5 '))
    b.store('2', '+FLAGS', '(\\Answered)')
    s.sendall(b'a6 NOOP\r\n')
    out['noop'] = r.until(lambda l: l.startswith('a6 '))
    # Anything but DONE ends an IDLE with BAD; IDLE before a login is refused.
    s.sendall(b'a7 IDLE\r\n')
    r.until(lambda l: l.startswith('+'))
    s.sendall(b'NOT DONE\r\n')
    out['not_done'] = r.until(lambda l: l.startswith('a7 '))
    s.sendall(b'a8 NOOP\r\n')
    out['after_not_done'] = r.until(lambda l: l.startswith('a8 '))
    s.close()
    s2 = socket.create_connection((host, port), timeout=30)
    r2 = Lines(s2)
    r2.line()
    s2.sendall(b'x1 IDLE\r\n')
    out['idle_before_login'] = r2.until(lambda l: l.startswith('x1 '))
    s2.close()
    b.logout()
elif scenario == 'search':
    m = imaplib.IMAP4(host, port, timeout=30)
    m.login('alice', 'secret')
    m.append('INBOX', '(\\Seen)', None, b'From: Ann <ann@example.org>\r\nSubject: lunch\r\nDate: Mon, 2 Mar 2026 10:00:00 +0000\r\n\r\nsoup today\r\n')
    m.append('INBOX', '(\\Flagged $Work)', None, b'From: Bob <bob@example.net>\r\nTo: alice@example.org\r\nSubject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\r\nDate: Tue, 3 Mar 2026 10:00:00 +0000\r\n\r\n' + b'x' * 3000 + b'\r\n')
    m.append('INBOX', None, None, b'From: Ann <ann@example.org>\r\nSubject: report\r\nX-Ticket: T-7\r\n\r\nnumbers\r\n')
    m.select('INBOX')
    for name, args in [
        ('all', ['ALL']),
        ('unseen', ['UNSEEN']),
        ('from_ann', ['FROM', 'ann']),
        ('from_ann_unseen', ['FROM', 'ann', 'UNSEEN']),
        ('or', ['OR', 'FLAGGED', 'SEEN']),
        ('not', ['NOT', 'FROM', 'ann']),
        ('larger', ['LARGER', '1000']),
        ('keyword', ['KEYWORD', '$Work']),
        ('header', ['HEADER', 'X-Ticket', 't-7']),
        ('body', ['BODY', 'SOUP']),
        ('text', ['TEXT', 'report']),
        ('senton', ['SENTON', '3-Mar-2026']),
        ('sentbefore', ['SENTBEFORE', '3-Mar-2026']),
        ('seq', ['2:*', 'NOT', 'SEEN']),
        ('new', ['NEW']),
    ]:
        out[name] = attempt(m.search, None, *args)
    out['uid'] = attempt(m.uid, 'SEARCH', 'UID', '2:3')
    m.literal = 'GRÜßE'.encode()
    out['utf8_subject'] = attempt(m.search, 'UTF-8', 'SUBJECT')
    out['badcharset'] = attempt(m.search, 'ISO-8859-1', 'ALL')
    out['modseq'] = attempt(m.search, None, 'MODSEQ', '1')
    m.logout()
elif scenario == 'structure':
    m = imaplib.IMAP4(host, port, timeout=30)
    m.login('alice', 'secret')
    message = (
        'From: =?UTF-8?Q?J=C3=BCrgen?= <jm@example.org>\r\n'
        'To: alice@example.org\r\n'
        'Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\r\n'
        'Message-ID: <m1@example.org>\r\n'
        'MIME-Version: 1.0\r\n'
        'Content-Type: multipart/mixed; boundary="outer"\r\n'
        '\r\n'
        '--outer\r\n'
        'Content-Type: text/plain; charset=utf-8\r\n'
        'Content-Transfer-Encoding: quoted-printable\r\n'
        '\r\n'
        'Gr=C3=BC=C3=9Fe\r\n'
        '--outer\r\n'
        'Content-Type: application/pdf; name="r.pdf"\r\n'
        'Content-Disposition: attachment; filename="r.pdf"\r\n'
        'Content-Transfer-Encoding: base64\r\n'
        '\r\n'
        'JVBERi0xLjQK\r\n'
        '--outer--\r\n').encode()
    m.append('INBOX', None, None, message)
    m.select('INBOX')
    out['envelope'] = attempt(m.fetch, '1', '(ENVELOPE)')
    out['bodystructure'] = attempt(m.fetch, '1', '(BODYSTRUCTURE)')
    out['body'] = attempt(m.fetch, '1', '(BODY)')
    out['part_text'] = attempt(m.fetch, '1', '(BODY.PEEK[1])')
    out['part_mime'] = attempt(m.fetch, '1', '(BODY.PEEK[2.MIME])')
    out['part_attachment'] = attempt(m.fetch, '1', '(BODY.PEEK[2]<0.4>)')
    out['part_missing'] = attempt(m.fetch, '1', '(BODY.PEEK[7])')
    out['all'] = attempt(m.fetch, '1', 'ALL')
    out['flags_after_peek'] = attempt(m.fetch, '1', '(FLAGS)')
    m.logout()
elif scenario == 'binary':
    s = socket.create_connection((host, port), timeout=30)
    r = Lines(s)
    r.line()
    r.command('l', 'LOGIN alice secret')
    def raw(tag, line):
        # Every byte up to the tagged line, as latin-1 (one character a byte): a literal8 may
        # hold any byte, NUL included.
        s.sendall(('%s %s\r\n' % (tag, line)).encode())
        buf, r.buf = r.buf, b''
        end = ('\r\n%s ' % tag).encode()
        while True:
            i = buf.find(end) if not buf.startswith(end[2:]) else -2
            if i != -1:
                j = buf.find(b'\r\n', i + 2)
                if j >= 0:
                    r.buf = buf[j + 2:]
                    return buf[:j].decode('latin-1')
            chunk = s.recv(65536)
            if not chunk:
                return buf.decode('latin-1') + '<closed>'
            buf += chunk
    message = (
        b'Subject: binary\r\n'
        b'MIME-Version: 1.0\r\n'
        b'Content-Type: multipart/mixed; boundary="b"\r\n'
        b'\r\n'
        b'--b\r\n'
        b'Content-Type: text/plain; charset=utf-8\r\n'
        b'Content-Transfer-Encoding: quoted-printable\r\n'
        b'\r\n'
        b'Gr=C3=BC=C3=9Fe =\r\nend\r\n'
        b'--b\r\n'
        b'Content-Type: application/octet-stream\r\n'
        b'Content-Transfer-Encoding: base64\r\n'
        b'\r\n'
        b'AAFQREb/\r\nDQo=\r\n'
        b'--b--\r\n')
    # RFC 3516 4.4: APPEND with a literal8.
    s.sendall(b'a1 APPEND INBOX ~{%d}\r\n' % len(message))
    out['append_continue'] = r.line()
    s.sendall(message + b'\r\n')
    out['append'] = r.until(lambda l: l.startswith('a1 '))
    odd = b'Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n'
    s.sendall(b'a2 APPEND INBOX {%d+}\r\n' % len(odd) + odd + b'\r\n')
    r.until(lambda l: l.startswith('a2 '))
    r.command('a3', 'SELECT INBOX')
    out['text'] = raw('b1', 'FETCH 1 (BINARY.PEEK[1] BINARY.SIZE[1])')
    out['attachment'] = raw('b2', 'FETCH 1 (BINARY.PEEK[2] BINARY.SIZE[2])')
    out['partial'] = raw('b3', 'FETCH 1 (BINARY.PEEK[2]<1.3>)')
    out['whole_size'] = raw('b4', 'FETCH 1 (BINARY.SIZE[] RFC822.SIZE)')
    out['seen'] = raw('b5', 'FETCH 1 (BINARY[1]<0.2>)')
    out['unknown_cte'] = raw('b6', 'FETCH 2 (BINARY.PEEK[1])')
    out['unknown_cte_size'] = raw('b7', 'FETCH 2 (BINARY.SIZE[1])')
    out['capability'] = raw('b8', 'CAPABILITY')
    s.close()
elif scenario == 'condstore':
    b = imaplib.IMAP4(host, port, timeout=30)
    b.login('alice', 'secret')
    for i in (1, 2):
        b.append('INBOX', None, None, ('Subject: m%d\r\n\r\nbody\r\n' % i).encode())
    b.select('INBOX')
    s = socket.create_connection((host, port), timeout=30)
    r = Lines(s)
    r.line()
    out['capability'] = r.command('c0', 'CAPABILITY')
    r.command('a1', 'LOGIN alice secret')
    out['enable'] = r.command('a2', 'ENABLE CONDSTORE')
    out['select'] = r.command('a3', 'SELECT INBOX')
    out['store_silent'] = r.command('a4', 'STORE 1 +FLAGS.SILENT (\\Seen)')
    out['fetch_all_modseq'] = r.command('a5', 'FETCH 1:* (MODSEQ)')
    highest = [l for l in out['select'] if 'HIGHESTMODSEQ' in l][0].split('HIGHESTMODSEQ ')[1].split(']')[0]
    out['changedsince'] = r.command('a9', 'FETCH 1:* (FLAGS) (CHANGEDSINCE %s)' % highest)
    out['store_unchanged'] = r.command('a6', 'UID STORE 1:2 (UNCHANGEDSINCE 1) +FLAGS (\\Flagged)')
    b.store('2', '+FLAGS', '(\\Answered)')
    out['noop'] = r.command('a7', 'NOOP')
    out['select_qresync'] = r.command('a8', 'SELECT INBOX (QRESYNC (1 1))')
    s.close()
    # SELECT (CONDSTORE) turns it on without ENABLE.
    s2 = socket.create_connection((host, port), timeout=30)
    r2 = Lines(s2)
    r2.line()
    r2.command('x1', 'LOGIN alice secret')
    out['select_condstore'] = r2.command('x2', 'SELECT INBOX (CONDSTORE)')
    out['x_store'] = r2.command('x3', 'STORE 2 -FLAGS (\\Answered)')
    s2.close()
    b.logout()
elif scenario == 'qresync':
    def session():
        r = Lines(socket.create_connection((host, port), timeout=30))
        r.line()
        r.command('l', 'LOGIN alice secret')
        return r
    b = imaplib.IMAP4(host, port, timeout=30)
    b.login('alice', 'secret')
    for i in range(1, 5):
        b.append('INBOX', None, None, ('Subject: m%d\r\n\r\nbody\r\n' % i).encode())
    r = session()
    out['enable'] = r.command('a1', 'ENABLE QRESYNC')
    select = r.command('a2', 'SELECT INBOX')
    uidvalidity = [l for l in select if 'UIDVALIDITY' in l][0].split('UIDVALIDITY ')[1].split(']')[0]
    highest = int([l for l in select if 'HIGHESTMODSEQ' in l][0].split('HIGHESTMODSEQ ')[1].split(']')[0])
    r.sock.close()
    # While the client is away: a flag change and an expunge.
    b.select('INBOX')
    b.store('2', '+FLAGS', '(\\Flagged)')
    b.store('3', '+FLAGS', '(\\Deleted)')
    b.expunge()
    r = session()
    r.command('a3', 'ENABLE QRESYNC')
    out['resync'] = r.command('a4', 'SELECT INBOX (QRESYNC (%s %d 1:4))' % (uidvalidity, highest))
    # Selected with QRESYNC on: another session's expunge comes as VANISHED.
    b.store('3', '+FLAGS', '(\\Deleted)')
    b.expunge()
    out['noop'] = r.command('a5', 'NOOP')
    out['fetch_vanished'] = r.command('a6', 'UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)' % highest)
    out['fetch_vanished_without_changedsince'] = r.command('a7', 'UID FETCH 1:* (FLAGS) (VANISHED)')
    # A modseq another node minted (its tag differs): a full resync.
    out['failover'] = r.command('a8', 'SELECT INBOX (QRESYNC (%s %d))' % (uidvalidity, highest ^ 1))
    out['other_uidvalidity'] = r.command('a9', 'SELECT INBOX (QRESYNC (%d %d))' % (int(uidvalidity) + 1, highest))
    # RFC 7162 3.2.5.2's seq-match-data: the client knew messages 1 and 3 as uids 1 and 3
    # (matching or not, the answer names every known uid gone).
    out['seq_match'] = r.command('b1', 'EXAMINE INBOX (QRESYNC (%s %d 1:4 (1,3 1,3)))' % (uidvalidity, highest))
    out['seq_match_no_known_uids'] = r.command('b2', 'EXAMINE INBOX (QRESYNC (%s %d (1:2 1:2)))' % (uidvalidity, highest))
    b.logout()
elif scenario == 'list_extended':
    b = imaplib.IMAP4(host, port, timeout=30)
    b.login('alice', 'secret')
    for i in range(1, 3):
        b.append('INBOX', None, None, ('Subject: m%d\r\n\r\nbody\r\n' % i).encode())
    b.create('Sent')
    b.create('Work/Reports')
    b.create('Gone')
    for name in ['INBOX', 'Work/Reports', 'Gone']:
        b.subscribe(name)
    # Deleted, still subscribed (RFC 3501 6.3.6: a subscription outlives its mailbox).
    b.delete('Gone')
    b.logout()
    r = Lines(socket.create_connection((host, port), timeout=30))
    r.line()
    out['before_login'] = r.command('a0', 'LIST (SUBSCRIBED) "" *')
    r.command('l', 'LOGIN alice secret')
    out['capability'] = r.command('c', 'CAPABILITY')
    out['patterns'] = r.command('a1', 'LIST "" ("INBOX" Sent)')
    out['subscribed'] = r.command('a2', 'LIST (SUBSCRIBED) "" "*"')
    out['recursive'] = r.command('a3', 'LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
    out['status'] = r.command('a4', 'LIST "" "%" RETURN (CHILDREN SUBSCRIBED STATUS (MESSAGES UIDNEXT))')
    out['recursive_alone'] = r.command('a5', 'LIST (REMOTE RECURSIVEMATCH) "" "*"')
    out['remote'] = r.command('a6', 'LIST (REMOTE) "" Sent RETURN ()')
    out['root'] = r.command('a7', 'LIST () "" ""')
    r.command('s', 'SELECT INBOX')
    out['selected'] = r.command('a8', 'LIST "" INBOX RETURN (STATUS (MESSAGES))')
elif scenario == 'special_use':
    b = imaplib.IMAP4(host, port, timeout=30)
    b.login('alice', 'secret')
    out['capabilities'] = list(b.capabilities)
    for name in ['Drafts', '"Sent Items"', 'Trash', 'Junk', 'Work']:
        b.create(name)
    out['imaplib_list'] = attempt(b.list, '""', '*')
    b.logout()
    r = Lines(socket.create_connection((host, port), timeout=30))
    r.line()
    r.command('l', 'LOGIN alice secret')
    out['all'] = r.command('a1', 'LIST "" "*"')
    out['selection'] = r.command('a2', 'LIST (SPECIAL-USE) "" "*"')
    out['return'] = r.command('a3', 'LIST "" "%" RETURN (SPECIAL-USE)')
elif scenario == 'esearch':
    b = imaplib.IMAP4(host, port, timeout=30)
    b.login('alice', 'secret')
    for i in range(1, 7):
        b.append('INBOX', None, None, ('Subject: m%d\r\n\r\nbody\r\n' % i).encode())
    b.logout()
    r = Lines(socket.create_connection((host, port), timeout=30))
    r.line()
    r.command('l', 'LOGIN alice secret')
    out['capability'] = r.command('c', 'CAPABILITY')
    out['unselected'] = r.command('a0', 'SEARCH RETURN (ALL) ALL')
    r.command('s', 'SELECT INBOX')
    r.command('f', 'STORE 2,4:5 +FLAGS.SILENT (\\Flagged)')
    out['uid_all_options'] = r.command('a1', 'UID SEARCH RETURN (MIN MAX COUNT ALL) FLAGGED')
    out['empty_return'] = r.command('a2', 'SEARCH RETURN () FLAGGED')
    out['count_none'] = r.command('a3', 'SEARCH RETURN (COUNT) DELETED')
    out['min_none'] = r.command('a4', 'SEARCH RETURN (MIN) DELETED')
    out['plain'] = r.command('a5', 'SEARCH FLAGGED')
    out['save'] = r.command('a6', 'SEARCH RETURN (SAVE) ALL')
    out['modseqs'] = r.command('a7', 'UID FETCH 1:* (MODSEQ)')
    out['modseq'] = r.command('a8', 'UID SEARCH RETURN (MAX) MODSEQ 1')
    out['modseq_all'] = r.command('a9', 'SEARCH RETURN (ALL) FLAGGED MODSEQ 1')
elif scenario == 'objectid':
    b = imaplib.IMAP4(host, port, timeout=30)
    b.login('alice', 'secret')
    for i in range(1, 3):
        b.append('INBOX', None, None, ('Subject: m%d\r\n\r\nbody\r\n' % i).encode())
    b.create('Work')
    b.logout()
    r = Lines(socket.create_connection((host, port), timeout=30))
    r.line()
    out['before_login'] = r.command('a0', 'STATUS INBOX (MAILBOXID)')
    r.command('l', 'LOGIN alice secret')
    out['capability'] = r.command('c', 'CAPABILITY')
    out['status_unselected'] = r.command('a1', 'STATUS INBOX (MESSAGES MAILBOXID)')
    out['status_work'] = r.command('a2', 'STATUS Work (MAILBOXID)')
    out['fetch_unselected'] = r.command('a3', 'FETCH 1 (EMAILID)')
    out['select'] = r.command('a4', 'SELECT INBOX')
    out['fetch'] = r.command('a5', 'FETCH 1:2 (FLAGS EMAILID THREADID)')
    out['fetch_one'] = r.command('a6', 'FETCH 2 EMAILID')
    out['move'] = r.command('a7', 'UID MOVE 1 Work')
    out['examine'] = r.command('a8', 'EXAMINE Work')
    out['fetch_moved'] = r.command('a9', 'UID FETCH 1:* (EMAILID)')
    out['copy'] = r.command('b1', 'UID COPY 1 INBOX')
    r.command('b2', 'EXAMINE INBOX')
    out['fetch_copied'] = r.command('b3', 'UID FETCH 1:* (EMAILID)')
elif scenario == 'metadata':
    r = Lines(socket.create_connection((host, port), timeout=30))
    r.line()
    out['before_login'] = r.command('a0', 'GETMETADATA INBOX /shared/comment')
    r.command('l', 'LOGIN alice secret')
    out['capability'] = r.command('c', 'CAPABILITY')
    r.command('cr', 'CREATE Work')
    # A quoted value and a LITERAL+ one over two lines; entry names in any case.
    out['set'] = r.command('a1', 'SETMETADATA INBOX (/private/comment "My own comment" /Shared/Comment {20+}\r\nShared\r\ncomment here)')
    out['get'] = r.command('a2', 'GETMETADATA INBOX (/shared/comment /PRIVATE/comment /shared/missing)')
    out['maxsize'] = r.command('a3', 'GETMETADATA INBOX (MAXSIZE 16) (/shared/comment /private/comment)')
    r.command('a4', 'SETMETADATA INBOX (/private/filters/values/small "SMALLER 5000" /private/filters/values/boss "FROM \\"boss@example.com\\"" /private/filters/values/small/x "deep")')
    out['depth0'] = r.command('a5', 'GETMETADATA (DEPTH 0) INBOX /private/filters/values')
    out['depth1'] = r.command('a6', 'GETMETADATA INBOX (DEPTH 1) (/private/filters/values)')
    out['depth_infinity'] = r.command('a7', 'GETMETADATA INBOX (DEPTH infinity MAXSIZE 100) /private')
    out['remove'] = r.command('a8', 'SETMETADATA INBOX (/private/comment NIL)')
    out['removed'] = r.command('a9', 'GETMETADATA INBOX /private/comment')
    out['too_big'] = r.command('b1', 'SETMETADATA INBOX (/shared/small "x" /shared/big "%s")' % ('x' * 1025))
    out['not_set'] = r.command('b2', 'GETMETADATA INBOX /shared/small')
    r.command('b3', 'SETMETADATA Work (%s)' % ' '.join('/shared/e%d "%d"' % (i, i) for i in range(1, 10)))
    out['too_many'] = r.command('b4', 'SETMETADATA Work (/shared/e1 "one" /shared/e10 "10" /shared/e11 "11")')
    out['work'] = r.command('b5', 'GETMETADATA Work (/shared/e1 /shared/e10)')
    out['swap'] = r.command('b6', 'SETMETADATA Work (/shared/e9 NIL /shared/e10 "10")')
    out['bad_entry'] = r.command('b7', 'SETMETADATA INBOX (/shared/a*b "x")')
    out['bad_scope'] = r.command('b8', 'GETMETADATA INBOX /public/comment')
    out['scope_set'] = r.command('b9', 'SETMETADATA INBOX (/shared "x")')
    out['server_get'] = r.command('c1', 'GETMETADATA "" /shared/comment')
    out['server_set'] = r.command('c2', 'SETMETADATA "" (/shared/comment "x")')
    out['missing_mailbox'] = r.command('c3', 'GETMETADATA Nope /shared/comment')
    out['binary'] = r.command('c4', 'SETMETADATA INBOX (/shared/bin ~{3+}\r\na\x00b)')
    out['binary_get'] = r.command('c5', 'GETMETADATA INBOX /shared/bin')
    r.command('c6', 'RENAME Work Play')
    out['renamed'] = r.command('c7', 'GETMETADATA Play /shared/e1')
    r.command('s', 'SELECT INBOX')
    out['selected'] = r.command('c8', 'GETMETADATA INBOX /shared/comment')
elif scenario == 'utf7':
    r = Lines(socket.create_connection((host, port), timeout=30))
    r.line()
    r.command('l', 'LOGIN alice secret')
    out['create'] = r.command('a1', 'CREATE Entw&APw-rfe')
    out['create_nested'] = r.command('a2', 'CREATE "Q&-A/&ZeVnLIqe-"')
    out['list'] = r.command('a3', 'LIST "" *')
    out['pattern'] = r.command('a4', 'LIST "" "Q&-A/%"')
    out['status'] = r.command('a5', 'STATUS Entw&APw-rfe (MESSAGES)')
    message = 'Subject: x\r\n\r\nbody\r\n'
    out['append'] = r.command('a6', 'APPEND Entw&APw-rfe {%d+}\r\n%s' % (len(message), message))
    out['select'] = r.command('a7', 'SELECT Entw&APw-rfe')
    out['copy'] = r.command('a8', 'COPY 1 "Q&-A/&ZeVnLIqe-"')
    out['move'] = r.command('a9', 'MOVE 1 Gel&APY-scht')
    out['subscribe'] = r.command('b1', 'SUBSCRIBE Gel&APY-scht')
    out['lsub'] = r.command('b2', 'LSUB "" Gel*')
    out['rename'] = r.command('b3', 'RENAME Entw&APw-rfe Bo&AO4-te')
    out['list_extended'] = r.command('b4', 'LIST "" (Bo&AO4-te "Q&-A/*") RETURN (STATUS (MESSAGES))')
    out['status_objectid'] = r.command('b5', 'STATUS Gel&APY-scht (MESSAGES MAILBOXID)')
    out['unterminated'] = r.command('b6', 'CREATE Entw&APw')
    out['not_canonical'] = r.command('b7', 'CREATE &AEE-')
    raw = 'Entw\u00fcrfe'.encode()
    out['raw_utf8'] = r.command('b8', 'CREATE {%d+}\r\n%s' % (len(raw), raw.decode()))
    out['bad_pattern'] = r.command('b9', 'LIST "" "&Z"')
    out['delete'] = r.command('c1', 'DELETE "Q&-A/&ZeVnLIqe-"')
elif scenario == 'create_special_use':
    r = Lines(socket.create_connection((host, port), timeout=30))
    r.line()
    out['before_login'] = r.command('a0', 'CREATE Box (USE (\\Sent))')
    r.command('l', 'LOGIN alice secret')
    out['capability'] = r.command('c', 'CAPABILITY')
    out['create'] = r.command('a1', 'CREATE "Sent Mail" (USE (\\Sent \\archive))')
    out['plain'] = r.command('a2', 'CREATE Stuff (USE ())')
    out['unknown'] = r.command('a3', 'CREATE Everything (USE (\\All))')
    out['not_made'] = r.command('a4', 'LIST "" Everything')
    out['selection'] = r.command('a5', 'LIST (SPECIAL-USE) "" "*"')
    out['metadata'] = r.command('a6', 'GETMETADATA "Sent Mail" /private/specialuse')
    out['exists'] = r.command('a7', 'CREATE "Sent Mail" (USE (\\Junk))')
    r.command('a8', 'RENAME "Sent Mail" Outbox')
    out['renamed'] = r.command('a9', 'LIST "" Outbox RETURN (SPECIAL-USE)')
    out['bad'] = r.command('b1', 'CREATE Box (USE (Sent))')
    out['set_use'] = r.command('b2', 'SETMETADATA Stuff (/private/specialuse "\\\\junk")')
    out['set_unknown'] = r.command('b3', 'SETMETADATA Stuff (/private/specialuse "\\\\All")')
    out['set_listed'] = r.command('b4', 'LIST (SPECIAL-USE) "" "*"')
    out['set_stored'] = r.command('b5', 'GETMETADATA Stuff /private/specialuse')
print(json.dumps(out))
"#;

/// A node `n1` with user alice (password "secret"), `[lmtp]` and `[imap]` (`imap` is the
/// section's body), each on a port the kernel picks (read back from the log).
fn imap_node(imap: &str) -> ImapNode {
    ImapNode::start(imap, "")
}

/// [`imap_node`] with more of the config (`extra`: whole sections).
fn imap_node_with(imap: &str, extra: &str) -> ImapNode {
    ImapNode::start(imap, extra)
}

/// Runs the Python client's `scenario` against `target`.
fn python(dir: &Path, target: &str, scenario: &str, extra: &[&str]) -> serde_json::Value {
    let script = dir.join("imap_client.py");
    std::fs::write(&script, CLIENT).unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .arg(target)
        .arg(scenario)
        .args(extra)
        .output()
        .expect("python3 runs (.ci/run installs it)");
    assert!(
        out.status.success(),
        "python {scenario} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// An `attempt` result: its status is `status` (imaplib answers NO as data and raises on BAD:
/// "ERROR") and its text (data or error) contains every needle.
#[track_caller]
fn expect(result: &serde_json::Value, status: &str, needles: &[&str]) {
    assert_eq!(result[0], status, "{result}");
    let text = result[1].to_string();
    for needle in needles {
        assert!(text.contains(needle), "{result} lacks {needle:?}");
    }
}

/// The mailbox names of a LIST/LSUB answer (`(attrs) "/" name` lines).
fn names(result: &serde_json::Value) -> Vec<String> {
    result[1]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|line| line.as_str())
        .map(|line| {
            line.rsplit_once(" \"/\" ")
                .unwrap()
                .1
                .trim_matches('"')
                .to_string()
        })
        .collect()
}

fn strings(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_mail_client_logs_in_lists_creates_selects_and_asks_status() {
    let mut n = imap_node("listen = \"127.0.0.1:0\"");
    let imap = n.imap(1);
    let lmtp = n.lmtp.clone();
    let out = python(n.tmp.path(), &imap, "session", &[&lmtp]);
    assert!(out["welcome"].as_str().unwrap().starts_with("* OK"), "{out}");
    let caps = strings(&out["capabilities"]);
    for cap in [
        "IMAP4REV1",
        "LITERAL+",
        "ID",
        "ENABLE",
        "NAMESPACE",
        "UNSELECT",
        "UIDPLUS",
        "MOVE",
        "IDLE",
        "CONDSTORE",
        "QRESYNC",
        "BINARY",
        "AUTH=PLAIN",
        "SASL-IR",
    ] {
        assert!(caps.iter().any(|c| c == cap), "{cap} missing from {caps:?}");
    }
    // Loopback, no certificate: no STARTTLS, and a password is taken in plaintext.
    for absent in ["STARTTLS", "LOGINDISABLED"] {
        assert!(!caps.iter().any(|c| c == absent), "{absent} advertised: {caps:?}");
    }
    expect(&out["wrong_password"], "ERROR", &["[AUTHENTICATIONFAILED]"]);
    expect(&out["unknown_user"], "ERROR", &["[AUTHENTICATIONFAILED]"]);
    expect(&out["login"], "OK", &[]);
    // After a login nothing about logging in is offered.
    let after = out["capability_after"][1][0].as_str().unwrap();
    assert!(
        after.contains("IMAP4REV1") && !after.contains("AUTH=PLAIN"),
        "{after}"
    );
    expect(&out["namespace"], "OK", &["((\\\"\\\" \\\"/\\\")) NIL NIL"]);
    expect(&out["id"], "OK", &[]);
    assert!(out["id_data"].to_string().contains("mailmesh"), "{out}");
    expect(&out["enable"], "OK", &[]);
    expect(&out["create"], "OK", &[]);
    expect(&out["create_again"], "NO", &["[ALREADYEXISTS]"]);
    expect(&out["create_trailing"], "OK", &[]);
    // INBOX (made by the delivery), Work (a superior CREATE made), Work/Reports, Archive.
    let all = names(&out["list_all"]);
    assert_eq!(all, ["Archive", "INBOX", "Work", "Work/Reports"], "{out}");
    let all_lines = out["list_all"].to_string();
    assert!(
        all_lines.contains("(\\\\HasChildren) \\\"/\\\" Work"),
        "{all_lines}"
    );
    assert_eq!(names(&out["list_top"]), ["Archive", "INBOX", "Work"], "{out}");
    expect(&out["list_root"], "OK", &["(\\\\Noselect) \\\"/\\\" \\\"\\\""]);
    assert_eq!(names(&out["list_work"]), ["Work/Reports"], "{out}");
    expect(&out["subscribe"], "OK", &[]);
    assert_eq!(names(&out["lsub"]), ["Work"], "{out}");
    expect(&out["unsubscribe"], "OK", &[]);
    assert_eq!(out["lsub_after"][1], serde_json::json!([null]), "{out}");

    // The two LMTP deliveries, counted.
    let status = out["status"][1][0].as_str().unwrap();
    assert!(status.starts_with("INBOX ("), "{status}");
    for item in ["MESSAGES 2", "UNSEEN 2", "UIDNEXT 3", "RECENT 0", "UIDVALIDITY "] {
        assert!(status.contains(item), "{item} missing from {status}");
    }
    expect(&out["status_missing"], "NO", &["[NONEXISTENT]"]);
    expect(&out["select"], "OK", &["2"]);
    let uidvalidity = &out["select_uidvalidity"][1][0];
    assert!(
        status.contains(&format!("UIDVALIDITY {}", uidvalidity.as_str().unwrap())),
        "{out}"
    );
    assert_eq!(out["select_uidnext"][1][0], "3", "{out}");
    assert!(
        out["select_flags"][1][0].as_str().unwrap().contains("\\Seen"),
        "{out}"
    );
    assert!(
        out["select_permanentflags"][1][0]
            .as_str()
            .unwrap()
            .contains("\\*"),
        "{out}"
    );
    let modseq: u64 = out["select_highestmodseq"][1][0]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(modseq > 0, "{out}");
    assert_eq!(out["select_readwrite"][0], "READ-WRITE", "{out}");
    expect(&out["check"], "OK", &[]);
    expect(&out["examine"], "OK", &["0"]);
    assert_eq!(out["examine_readonly"][0], "READ-ONLY", "{out}");
    expect(&out["unselect"], "OK", &[]);
    expect(&out["select_missing"], "NO", &["[NONEXISTENT]"]);
    expect(&out["rename"], "OK", &[]);
    assert_eq!(
        names(&out["list_renamed"]),
        ["Archive", "INBOX", "Projects", "Projects/Reports"],
        "{out}"
    );
    expect(&out["rename_inbox"], "NO", &["[CANNOT]"]);
    expect(&out["delete"], "OK", &[]);
    expect(&out["delete_inbox"], "NO", &["[CANNOT]"]);
    expect(&out["delete_missing"], "NO", &["[NONEXISTENT]"]);
    assert_eq!(names(&out["list_end"]), ["Archive", "INBOX", "Projects"], "{out}");
    expect(&out["noop"], "OK", &[]);
    expect(&out["logout"], "BYE", &[]);
    assert_eq!(names(&out["bob_list"]), ["INBOX"], "{out}");
    expect(&out["bob_select"], "OK", &["0"]);
    expect(&out["bob_status"], "OK", &["MESSAGES 0"]);
}

#[test]
fn bad_input_gets_a_clear_answer_and_the_session_goes_on() {
    let mut n = imap_node("listen = \"127.0.0.1:0\"");
    let imap = n.imap(1);
    let out = python(n.tmp.path(), &imap, "bad_input", &[]);
    let last = |key: &str| -> String {
        let lines = strings(&out[key]);
        lines.last().unwrap().clone()
    };
    assert!(last("big_sync").starts_with("a1 BAD [TOOBIG]"), "{out}");
    assert!(last("big_nonsync").starts_with("a2 BAD [TOOBIG]"), "{out}");
    assert!(last("unknown").starts_with("a3 BAD"), "{out}");
    assert!(
        last("wrong_state").starts_with("a4 BAD") && last("wrong_state").contains("login"),
        "{out}"
    );
    assert!(last("empty_line_then_noop").starts_with("a5 OK"), "{out}");
    assert!(last("long_line").starts_with("a6 BAD [TOOBIG]"), "{out}");
    assert!(out["continuation"].as_str().unwrap().starts_with("+ "), "{out}");
    assert!(last("literal_login").starts_with("a7 OK"), "{out}");
    assert!(last("logout").starts_with("a8 OK"), "{out}");
    assert!(
        strings(&out["logout"]).iter().any(|l| l.starts_with("* BYE")),
        "{out}"
    );
    assert_eq!(out["plain_challenge"], "+ \r\n", "{out}");
    assert!(last("plain_cancel").starts_with("b1 BAD"), "{out}");
    assert!(last("plain_continued").starts_with("b2 OK"), "{out}");
    assert!(last("plain_twice").starts_with("b3 BAD"), "{out}");
    // The node served all of it and is still up.
    assert!(n.node.is_running());
}

#[test]
fn passwords_need_tls_where_plaintext_is_not_allowed() {
    // Certificates from the node's own `mailmesh certs` (the CA signs one naming n1).
    let certs = tempfile::TempDir::new().unwrap();
    let ca = certs.path().join("ca");
    for args in [
        vec!["certs", "ca", "--out", ca.to_str().unwrap()],
        vec![
            "certs",
            "node",
            "n1",
            "--ca",
            ca.to_str().unwrap(),
            "--out",
            certs.path().to_str().unwrap(),
        ],
    ] {
        let done = mailmesh(&args).output().unwrap();
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    }
    let mut n = imap_node(&format!(
        "listen = \"127.0.0.1:0\"\nlisten_tls = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\n\
         allow_plaintext_auth = false\n",
        certs.path().join("n1.pem").to_str().unwrap(),
        certs.path().join("n1.key").to_str().unwrap()
    ));
    let starttls = n.imap(1);
    let implicit = n.imap(2);
    let ca_pem = ca.join("ca.pem");
    let out = python(
        n.tmp.path(),
        &starttls,
        "starttls",
        &[ca_pem.to_str().unwrap(), &implicit],
    );
    let before = strings(&out["capabilities"]);
    assert!(before.iter().any(|c| c == "STARTTLS"), "{before:?}");
    assert!(before.iter().any(|c| c == "LOGINDISABLED"), "{before:?}");
    assert!(!before.iter().any(|c| c == "AUTH=PLAIN"), "{before:?}");
    expect(&out["login_plaintext"], "ERROR", &["[PRIVACYREQUIRED]"]);
    expect(&out["authenticate_plaintext"], "ERROR", &["[PRIVACYREQUIRED]"]);
    expect(&out["starttls"], "OK", &[]);
    assert!(out["tls_version"].as_str().unwrap().starts_with("TLS"), "{out}");
    let after = strings(&out["capabilities_tls"]);
    assert!(after.iter().any(|c| c == "AUTH=PLAIN"), "{after:?}");
    assert!(
        !after.iter().any(|c| c == "STARTTLS" || c == "LOGINDISABLED"),
        "{after:?}"
    );
    expect(&out["starttls_again"], "ERROR", &["already active"]);
    expect(&out["login"], "OK", &[]);
    expect(&out["list"], "OK", &["INBOX"]);
    expect(&out["logout"], "BYE", &[]);
    assert!(
        out["implicit_tls_version"].as_str().unwrap().starts_with("TLS"),
        "{out}"
    );
    let implicit_caps = strings(&out["implicit_capabilities"]);
    assert!(
        implicit_caps.iter().any(|c| c == "AUTH=PLAIN"),
        "{implicit_caps:?}"
    );
    assert!(
        !implicit_caps.iter().any(|c| c == "STARTTLS"),
        "{implicit_caps:?}"
    );
    expect(&out["implicit_authenticate"], "OK", &[]);
    expect(&out["implicit_logout"], "BYE", &[]);
}

/// The FETCH lines of an `attempt` (imaplib's data: one string a message, or a list whose first
/// item is the line before a literal).
fn fetch_lines(result: &serde_json::Value) -> Vec<String> {
    result[1]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|item| match item {
            serde_json::Value::String(line) => Some(line.clone()),
            serde_json::Value::Array(parts) => parts[0].as_str().map(str::to_string),
            _ => None,
        })
        .collect()
}

#[test]
fn a_mail_client_appends_fetches_stores_expunges_copies_and_moves() {
    let mut n = imap_node("listen = \"127.0.0.1:0\"");
    let imap = n.imap(1);
    let lmtp = n.lmtp.clone();
    let out = python(n.tmp.path(), &imap, "messages", &[&lmtp]);
    let caps = strings(&out["capabilities"]);
    for cap in ["UIDPLUS", "MOVE", "LITERAL+"] {
        assert!(caps.iter().any(|c| c == cap), "{cap} missing from {caps:?}");
    }
    // The message LMTP delivered is message 1, whole.
    expect(&out["select"], "OK", &["1"]);
    expect(&out["fetch_delivered"], "OK", &["UID 1", "FLAGS ()"]);
    // LMTP put its trace fields on top (RFC 5321 4.4).
    let delivered = out["delivered_body"].as_str().unwrap();
    assert!(delivered.starts_with("Return-Path: <s@ext.example>\r\n"), "{out}");
    assert!(
        delivered.ends_with("\r\nSubject: delivered\r\nFrom: s@ext.example\r\n\r\nby LMTP\r\n"),
        "{out}"
    );
    // APPEND answers where the message went (RFC 4315), and NOOP tells of it.
    let append = out["append"].to_string();
    assert!(
        append.contains("[APPENDUID ") && append.contains(" 2]"),
        "{append}"
    );
    expect(&out["noop_exists"][0], "OK", &[]);
    // SELECT's EXISTS 1, then the APPEND's own.
    assert_eq!(out["noop_exists"][1][1], serde_json::json!(["1", "2"]), "{out}");
    let meta = fetch_lines(&out["fetch_meta"]);
    assert_eq!(meta.len(), 2, "{out}");
    assert!(meta[1].contains("UID 2"), "{meta:?}");
    assert!(
        meta[1].contains("\\Flagged") && meta[1].contains("$Work"),
        "{meta:?}"
    );
    let appended = "Subject: appended\r\nX-Folded: one\r\n two\r\n\r\nfirst line\r\nsecond line\r\n";
    assert!(
        meta[1].contains(&format!("RFC822.SIZE {}", appended.len())),
        "{meta:?}"
    );
    assert!(
        meta[1].contains("INTERNALDATE \"02-Jan-2024 10:20:30 +0000\""),
        "{meta:?}"
    );
    expect(&out["modseq"], "OK", &["MODSEQ ("]);
    assert_eq!(out["body"].as_str().unwrap(), appended, "{out}");
    assert_eq!(out["partial"].as_str().unwrap(), &appended[9..17], "{out}");
    assert!(
        out["partial_line"][0].as_str().unwrap().contains("BODY[]<9>"),
        "{out}"
    );
    let header = "Subject: appended\r\nX-Folded: one\r\n two\r\n\r\n";
    assert_eq!(out["header"].as_str().unwrap(), header, "{out}");
    assert_eq!(
        out["text"].as_str().unwrap(),
        "first line\r\nsecond line\r\n",
        "{out}"
    );
    assert_eq!(
        out["fields"].as_str().unwrap(),
        "X-Folded: one\r\n two\r\n\r\n",
        "{out}"
    );
    assert_eq!(out["rfc822_header"].as_str().unwrap(), header, "{out}");
    // PEEK and RFC822.HEADER leave \Seen alone; RFC822.TEXT and BODY[...] set it.
    let peeked = out["flags_after_peek"].to_string();
    assert!(!peeked.contains("\\\\Seen"), "{peeked}");
    expect(&out["flags_after_text"], "OK", &["\\\\Seen"]);
    assert!(
        out["body_sets_seen"][0].as_str().unwrap().contains("\\Seen"),
        "{out}"
    );
    // A number past the last message is refused; an unknown uid is no message at all.
    expect(&out["out_of_range"], "ERROR", &["out of range"]);
    expect(&out["uid_unknown"], "OK", &[]);
    assert_eq!(out["uid_unknown"][1], serde_json::json!([null]), "{out}");
    expect(&out["envelope"], "OK", &["ENVELOPE (NIL \\\"delivered\\\""]);
    // BINARY (RFC 3516): a part without a content-transfer-encoding comes as stored.
    expect(&out["binary"], "OK", &["1 (BINARY[1] {9}", "by LMTP"]);
    // STORE answers with the flags after it, unless silent.
    expect(&out["store_add"], "OK", &["\\\\Deleted", "$Done"]);
    let removed = out["store_remove"].to_string();
    assert!(
        removed.contains("$Done") && !removed.contains("\\\\Deleted"),
        "{removed}"
    );
    // An earlier FETCH of MODSEQ turned CONDSTORE on (RFC 7162 3.1): .SILENT then leaves out
    // FLAGS but still answers UID and MODSEQ.
    let silent = fetch_lines(&out["store_silent"]);
    assert_eq!(silent.len(), 1, "{out}");
    assert!(silent[0].starts_with("1 (UID 1 MODSEQ ("), "{out}");
    let replaced = fetch_lines(&out["store_replace"]);
    assert_eq!(replaced.len(), 1, "{out}");
    assert!(
        replaced[0].contains("FLAGS (\\Seen)") && replaced[0].contains("UID 2"),
        "{replaced:?}"
    );
    // Both changed after modseq 1: left alone, and named.
    expect(&out["store_unchanged"], "OK", &["[MODIFIED 1:2]"]);
    assert!(
        out["store_quoted"].as_str().unwrap().starts_with("q1 BAD"),
        "{out}"
    );
    let flags_end = fetch_lines(&out["flags_end"]);
    assert!(
        flags_end[0].contains("\\Answered") && !flags_end[0].contains("\\Draft"),
        "{flags_end:?}"
    );
    // Each APPEND to the selected mailbox is told at once (EXISTS 3, 4, 5, 6).
    assert_eq!(
        out["exists_six"][1][1],
        serde_json::json!(["3", "4", "5", "6"]),
        "{out}"
    );
    // Messages 2 and 4 go: announced as 2, then 3 (the old 4, renumbered after the first).
    assert_eq!(out["expunge"], serde_json::json!(["OK", ["2", "3"]]), "{out}");
    let uids: Vec<String> = fetch_lines(&out["after_expunge"]);
    assert_eq!(
        uids,
        ["1 (UID 1)", "2 (UID 3)", "3 (UID 5)", "4 (UID 6)"],
        "{out}"
    );
    // UID EXPUNGE 5 takes uid 5 (message 3) only, though message 4 has \Deleted too.
    assert_eq!(out["uid_expunge"][1][1], serde_json::json!(["3"]), "{out}");
    let left = fetch_lines(&out["after_uid_expunge"]);
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(
        left[2].contains("UID 6") && left[2].contains("\\Deleted"),
        "{left:?}"
    );
    expect(&out["copy_missing"], "NO", &["[TRYCREATE]"]);
    expect(&out["append_missing"], "NO", &["[TRYCREATE]"]);
    expect(&out["create"], "OK", &[]);
    expect(&out["copy"], "OK", &["[COPYUID ", " 1,3 1:2]"]);
    expect(&out["move"][0], "OK", &[]);
    assert!(out["move"][1].to_string().contains("[COPYUID "), "{out}");
    assert!(out["move"][1].to_string().contains(" 1 3]"), "{out}");
    assert_eq!(out["move"][2][1], serde_json::json!(["1"]), "{out}");
    assert_eq!(
        fetch_lines(&out["after_move"]),
        ["1 (UID 3)", "2 (UID 6)"],
        "{out}"
    );
    // A copy into the selected mailbox is a new message there, told at the next command.
    expect(&out["copy_within"], "OK", &[]);
    assert_eq!(
        out["exists_after_copy_within"][1][1],
        serde_json::json!(["3"]),
        "{out}"
    );
    expect(&out["archive_status"], "OK", &["MESSAGES 3", "UIDNEXT 4"]);
    expect(&out["select_archive"], "OK", &["3"]);
    let archive = fetch_lines(&out["archive_uids"]);
    assert_eq!(archive.len(), 3, "{archive:?}");
    assert_eq!(out["archive_body"].as_str().unwrap(), delivered, "{out}");
    // CLOSE expunges the \Deleted message, silently.
    expect(&out["close"], "OK", &[]);
    expect(&out["archive_after_close"], "OK", &["MESSAGES 2"]);
    // EXAMINE: nothing changes, and BODY[] does not set \Seen.
    expect(&out["examine"], "OK", &["3"]);
    expect(&out["examine_store"], "NO", &["[READ-ONLY]"]);
    assert!(
        !out["examine_fetch"][0].as_str().unwrap().contains("FLAGS"),
        "{out}"
    );
    let examined = out["examine_flags"].to_string();
    assert!(!examined.contains("\\\\Seen"), "{examined}");
    expect(&out["examine_expunge"], "NO", &["[READ-ONLY]"]);
    expect(&out["logout"], "BYE", &[]);
    assert!(n.node.is_running());
}

#[test]
fn a_session_learns_of_another_sessions_expunge_and_append_where_rfc_3501_allows() {
    let mut n = imap_node("listen = \"127.0.0.1:0\"");
    let imap = n.imap(1);
    let out = python(n.tmp.path(), &imap, "two_sessions", &[]);
    expect(&out["a_select"], "OK", &["3"]);
    expect(&out["b_select"], "OK", &["3"]);
    assert_eq!(out["b_expunge"], serde_json::json!(["OK", ["2"]]), "{out}");
    expect(&out["b_append"], "OK", &["[APPENDUID ", " 4]"]);
    // Message 2 is gone, and session a is not told during FETCH: it gets what is left.
    assert_eq!(fetch_lines(&out["a_fetch"]), ["1 (UID 1)", "3 (UID 3)"], "{out}");
    assert_eq!(out["a_fetch_expunge"][1], serde_json::json!([null]), "{out}");
    // SELECT's EXISTS 3, then the other session's append.
    assert_eq!(out["a_fetch_exists"][1], serde_json::json!(["3", "4"]), "{out}");
    expect(&out["a_noop"], "OK", &[]);
    assert_eq!(out["a_noop_expunge"][1], serde_json::json!(["2"]), "{out}");
    assert_eq!(
        fetch_lines(&out["a_after"]),
        ["1 (UID 1)", "2 (UID 3)", "3 (UID 4)"],
        "{out}"
    );
}

#[test]
fn an_append_over_the_limits_is_refused_and_a_cut_one_stores_nothing() {
    let mut n = imap_node_with("listen = \"127.0.0.1:0\"", "[limits]\nmax_message_bytes = 4096\n");
    let imap = n.imap(1);
    let out = python(n.tmp.path(), &imap, "append_limits", &[]);
    // Refused before a byte of it was sent: no continuation request came first.
    assert_eq!(out["big_sync"].as_array().unwrap().len(), 1, "{out}");
    assert!(
        out["big_sync"][0]
            .as_str()
            .unwrap()
            .starts_with("a1 BAD [TOOBIG]"),
        "{out}"
    );
    let last = |key: &str| strings(&out[key]).last().unwrap().clone();
    assert!(last("big_nonsync").starts_with("a2 BAD [TOOBIG]"), "{out}");
    assert!(last("over_message_limit").starts_with("a3 NO [TOOBIG]"), "{out}");
    assert!(out["continuation"].as_str().unwrap().starts_with("+ "), "{out}");
    assert!(last("small").starts_with("a4 OK [APPENDUID "), "{out}");
    assert!(
        out["cut_continuation"].as_str().unwrap().starts_with("+ "),
        "{out}"
    );
    assert!(last("empty").starts_with("a6 NO"), "{out}");
    assert!(
        last("recent_flag").starts_with("a7 NO") && last("recent_flag").contains("Recent"),
        "{out}"
    );
    // Only the small one is stored.
    assert!(
        strings(&out["status"]).iter().any(|l| l.contains("(MESSAGES 1)")),
        "{out}"
    );
    assert!(n.node.is_running());
}

#[test]
fn an_idling_session_is_told_of_appends_deliveries_flag_changes_and_expunges_as_they_happen() {
    let mut n = imap_node("listen = \"127.0.0.1:0\"");
    let imap = n.imap(1);
    let lmtp = n.lmtp.clone();
    let out = python(n.tmp.path(), &imap, "idle", &[&lmtp]);
    let lines = |key: &str| strings(&out[key]);
    assert!(lines("capability")[0].contains(" IDLE"), "{out}");
    assert!(lines("select").contains(&"* 1 EXISTS".to_string()), "{out}");
    assert_eq!(lines("idle"), ["+ idling"], "{out}");
    expect(&out["b_append"], "OK", &["[APPENDUID "]);
    // Each told before the client did anything: the last line read is the announcement (a
    // timeout or a closed connection would be the last line instead).
    assert_eq!(lines("told_append"), ["* 2 EXISTS"], "{out}");
    assert_eq!(out["lmtp"], 250, "{out}");
    assert_eq!(lines("told_delivery"), ["* 3 EXISTS"], "{out}");
    assert_eq!(
        lines("told_flags"),
        ["* 1 FETCH (UID 1 FLAGS (\\Flagged))"],
        "{out}"
    );
    assert_eq!(
        lines("told_deleted"),
        ["* 2 FETCH (UID 2 FLAGS (\\Deleted))"],
        "{out}"
    );
    assert_eq!(lines("told_expunge"), ["* 2 EXPUNGE"], "{out}");
    assert!(lines("done").last().unwrap().starts_with("a3 OK"), "{out}");
    assert_eq!(
        lines("fetch"),
        [
            "* 1 FETCH (UID 1 FLAGS (\\Flagged))",
            "* 2 FETCH (UID 3 FLAGS ())",
            "a4 OK FETCH completed"
        ],
        "{out}"
    );
    assert_eq!(lines("own_silent"), ["a5 OK STORE completed"], "{out}");
    assert_eq!(
        lines("noop"),
        ["* 2 FETCH (UID 3 FLAGS (\\Answered))", "a6 OK NOOP completed"],
        "{out}"
    );
    assert!(lines("not_done").last().unwrap().starts_with("a7 BAD"), "{out}");
    assert_eq!(lines("after_not_done"), ["a8 OK NOOP completed"], "{out}");
    assert!(lines("idle_before_login")[0].starts_with("x1 BAD"), "{out}");
}

#[test]
fn a_mail_client_searches_by_flags_sizes_dates_sets_headers_and_bodies() {
    let mut n = imap_node("listen = \"127.0.0.1:0\"");
    let imap = n.imap(1);
    let out = python(n.tmp.path(), &imap, "search", &[]);
    for (key, expected) in [
        ("all", "1 2 3"),
        ("unseen", "2 3"),
        ("from_ann", "1 3"),
        ("from_ann_unseen", "3"),
        ("or", "1 2"),
        ("not", "2"),
        ("larger", "2"),
        ("keyword", "2"),
        ("header", "3"),
        ("body", "1"),
        ("text", "3"),
        ("senton", "2"),
        ("sentbefore", "1"),
        ("seq", "2 3"),
        ("new", ""),
        ("uid", "2 3"),
        ("utf8_subject", "2"),
    ] {
        assert_eq!(out[key], serde_json::json!(["OK", [expected]]), "{key}: {out}");
    }
    expect(&out["badcharset"], "NO", &["[BADCHARSET (UTF-8 US-ASCII)]"]);
    // RFC 7162 3.1.5: with MODSEQ, the highest modseq of the messages found.
    let modseq = out["modseq"][1][0].as_str().unwrap();
    assert!(modseq.starts_with("1 2 3 (MODSEQ "), "{out}");
}

#[test]
fn a_mail_client_fetches_envelope_structure_and_numbered_parts_of_a_multipart_message() {
    let mut n = imap_node("listen = \"127.0.0.1:0\"");
    let imap = n.imap(1);
    let out = python(n.tmp.path(), &imap, "structure", &[]);
    let flat = |key: &str| out[key].to_string();
    // Header text as written (the client decodes RFC 2047); a decoded non-ASCII name comes
    // encoded again.
    expect(
        &out["envelope"],
        "OK",
        &[
            "\\\"=?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\\\"",
            "((\\\"=?UTF-8?B?SsO8cmdlbg==?=\\\" NIL \\\"jm\\\" \\\"example.org\\\"))",
            "((NIL NIL \\\"alice\\\" \\\"example.org\\\"))",
            "\\\"<m1@example.org>\\\"",
        ],
    );
    expect(
        &out["bodystructure"],
        "OK",
        &[
            "(\\\"TEXT\\\" \\\"plain\\\" (\\\"charset\\\" \\\"utf-8\\\") NIL NIL \\\"quoted-printable\\\" 15 1",
            "(\\\"application\\\" \\\"pdf\\\" (\\\"name\\\" \\\"r.pdf\\\") NIL NIL \\\"base64\\\" 12 NIL (\\\"attachment\\\" (\\\"filename\\\" \\\"r.pdf\\\"))",
            "\\\"mixed\\\" (\\\"boundary\\\" \\\"outer\\\")",
        ],
    );
    expect(
        &out["body"],
        "OK",
        &["BODY ((\\\"TEXT\\\" \\\"plain\\\"", "\\\"mixed\\\")"],
    );
    assert!(
        !flat("body").contains("attachment"),
        "BODY has no extension data: {out}"
    );
    expect(&out["part_text"], "OK", &["BODY[1] {15}", "Gr=C3=BC=C3=9Fe"]);
    expect(
        &out["part_mime"],
        "OK",
        &[
            "BODY[2.MIME]",
            "Content-Disposition: attachment; filename=\\\"r.pdf\\\"",
        ],
    );
    expect(&out["part_attachment"], "OK", &["BODY[2]<0> {4}", "JVBE"]);
    // A part that does not exist is sent empty (RFC 3501 6.4.5).
    expect(&out["part_missing"], "OK", &["BODY[7] {0}"]);
    expect(
        &out["all"],
        "OK",
        &["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
    );
    // Every fetch above peeked: nothing set \Seen.
    assert_eq!(
        out["flags_after_peek"],
        serde_json::json!(["OK", ["1 (FLAGS ())"]]),
        "{out}"
    );
}

/// RFC 3516: a multipart message appended as a literal8, its quoted-printable text and base64
/// attachment fetched decoded (a literal8 where the bytes hold a NUL), partially, by size, with
/// and without \Seen, and an unknown encoding refused.
#[test]
fn binary_fetches_decoded_parts_and_append_takes_a_literal8() {
    let mut n = imap_node("listen = \"127.0.0.1:0\"");
    let imap = n.imap(1);
    let out = python(n.tmp.path(), &imap, "binary", &[]);
    let text = |key: &str| out[key].as_str().unwrap_or_default().to_string();
    assert_eq!(text("append_continue"), "+ ready for the literal", "{out}");
    assert!(
        strings(&out["append"])
            .last()
            .unwrap()
            .starts_with("a1 OK [APPENDUID "),
        "{out}"
    );
    // Quoted-printable: the UTF-8 bytes themselves (no charset conversion), the soft break
    // joined, the space before it kept (it is not at the end of the encoded line). The CRLF
    // before the boundary is the boundary's (RFC 2046 5.1.1), not the part's.
    assert_eq!(
        text("text"),
        "* 1 FETCH (BINARY[1] {11}\r\nGr\u{c3}\u{bc}\u{c3}\u{9f}e end BINARY.SIZE[1] 11)\r\n\
         b1 OK FETCH completed",
        "{out}"
    );
    // base64 holding a NUL: a literal8.
    assert_eq!(
        text("attachment"),
        "* 1 FETCH (BINARY[2] ~{8}\r\n\u{0}\u{1}PDF\u{ff}\r\n BINARY.SIZE[2] 8)\r\n\
         b2 OK FETCH completed",
        "{out}"
    );
    assert_eq!(
        text("partial"),
        "* 1 FETCH (BINARY[2] {3}\r\n\u{1}PD)\r\nb3 OK FETCH completed",
        "{out}"
    );
    // BINARY.SIZE[] is the whole message, as stored.
    let whole = text("whole_size");
    let size = whole
        .strip_prefix("* 1 FETCH (RFC822.SIZE ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(
        whole,
        format!("* 1 FETCH (RFC822.SIZE {size} BINARY.SIZE[] {size})\r\nb4 OK FETCH completed"),
        "{out}"
    );
    // Without PEEK: \Seen is set and told.
    assert_eq!(
        text("seen"),
        "* 1 FETCH (FLAGS (\\Seen) BINARY[1] {2}\r\nGr)\r\nb5 OK FETCH completed",
        "{out}"
    );
    for (key, tag) in [("unknown_cte", "b6"), ("unknown_cte_size", "b7")] {
        assert_eq!(
            text(key),
            format!(
                "{tag} NO [UNKNOWN-CTE] message 2 has a part in the content-transfer-encoding \
                 \"x-uuencode\", which this server cannot decode"
            ),
            "{out}"
        );
    }
    assert!(text("capability").contains(" BINARY"), "{out}");
}

#[test]
fn condstore_is_enabled_and_answers_with_modseqs_changedsince_and_unchangedsince() {
    let mut n = imap_node("listen = \"127.0.0.1:0\"");
    let imap = n.imap(1);
    let out = python(n.tmp.path(), &imap, "condstore", &[]);
    let lines = |key: &str| strings(&out[key]);
    let modseq_of = |line: &str| -> u64 {
        let at = line
            .find("MODSEQ (")
            .unwrap_or_else(|| panic!("no MODSEQ in {line}"))
            + 8;
        line[at..].split(')').next().unwrap().parse().unwrap()
    };
    assert!(lines("capability")[0].contains(" CONDSTORE"), "{out}");
    assert_eq!(
        lines("enable"),
        ["* ENABLED CONDSTORE", "a2 OK ENABLE completed"],
        "{out}"
    );
    let select = lines("select");
    let highest: u64 = select
        .iter()
        .find_map(|l| l.strip_prefix("* OK [HIGHESTMODSEQ "))
        .and_then(|l| l.split(']').next())
        .unwrap_or_else(|| panic!("no HIGHESTMODSEQ: {out}"))
        .parse()
        .unwrap();
    // .SILENT leaves out FLAGS, not MODSEQ, once CONDSTORE is on.
    let silent = lines("store_silent");
    assert_eq!(silent.len(), 2, "{out}");
    assert!(silent[0].starts_with("* 1 FETCH (UID 1 MODSEQ ("), "{out}");
    let seen_at = modseq_of(&silent[0]);
    assert!(seen_at > highest, "{out}");
    let all = lines("fetch_all_modseq");
    assert_eq!(all.len(), 3, "{out}");
    assert_eq!(modseq_of(&all[0]), seen_at, "{out}");
    assert!(modseq_of(&all[1]) <= highest, "{out}");
    // Only message 1 changed since the SELECT.
    let changed = lines("changedsince");
    assert_eq!(changed.len(), 2, "{out}");
    assert!(
        changed[0].starts_with("* 1 FETCH (FLAGS (\\Seen) MODSEQ ("),
        "{out}"
    );
    // Both changed after modseq 1: nothing stored, both named in MODIFIED (by uid).
    let unchanged = lines("store_unchanged");
    assert_eq!(unchanged.len(), 1, "{out}");
    assert!(unchanged[0].starts_with("a6 OK [MODIFIED 1:2]"), "{out}");
    // Another session's flag change, told with its MODSEQ.
    let noop = lines("noop");
    assert_eq!(noop.len(), 2, "{out}");
    assert!(
        noop[0].starts_with("* 2 FETCH (UID 2 FLAGS (\\Answered) MODSEQ ("),
        "{out}"
    );
    assert!(
        lines("select_qresync").last().unwrap().starts_with("a8 BAD"),
        "{out}"
    );
    assert!(
        lines("select_condstore")
            .iter()
            .any(|l| l.starts_with("* OK [HIGHESTMODSEQ ")),
        "{out}"
    );
    let x = lines("x_store");
    assert!(x[0].starts_with("* 2 FETCH (FLAGS () UID 2 MODSEQ ("), "{out}");
}

#[test]
fn qresync_tells_a_returning_client_what_vanished_and_changed_even_after_a_failover() {
    let mut n = imap_node("listen = \"127.0.0.1:0\"");
    let imap = n.imap(1);
    let out = python(n.tmp.path(), &imap, "qresync", &[]);
    let lines = |key: &str| strings(&out[key]);
    let untagged = |key: &str| -> Vec<String> {
        lines(key)
            .into_iter()
            .filter(|l| l.starts_with("* VANISHED") || l.starts_with("* ") && l.contains(" FETCH ("))
            .collect()
    };
    assert_eq!(
        lines("enable"),
        ["* ENABLED QRESYNC", "a1 OK ENABLE completed"],
        "{out}"
    );
    // Uid 3 went, uid 2 changed; uids 1 and 4 did not.
    let resync = untagged("resync");
    assert_eq!(resync.len(), 2, "{out}");
    assert_eq!(resync[0], "* VANISHED (EARLIER) 3", "{out}");
    assert!(
        resync[1].starts_with("* 2 FETCH (UID 2 FLAGS (\\Flagged) MODSEQ ("),
        "{out}"
    );
    assert!(lines("resync").contains(&"* 3 EXISTS".to_string()), "{out}");
    // Message 3 (uid 4) expunged by the other session: VANISHED, not EXPUNGE.
    assert_eq!(lines("noop"), ["* VANISHED 4", "a5 OK NOOP completed"], "{out}");
    let fetched = untagged("fetch_vanished");
    assert_eq!(fetched.len(), 2, "{out}");
    assert_eq!(fetched[0], "* VANISHED (EARLIER) 3:4", "{out}");
    assert!(
        fetched[1].starts_with("* 2 FETCH (UID 2 FLAGS (\\Flagged) MODSEQ ("),
        "{out}"
    );
    assert!(
        lines("fetch_vanished_without_changedsince")[0].starts_with("a7 BAD"),
        "{out}"
    );
    // Failover: every message's flags, and every uid gone.
    let failover = untagged("failover");
    assert_eq!(failover.len(), 3, "{out}");
    assert_eq!(failover[0], "* VANISHED (EARLIER) 3:4", "{out}");
    assert!(
        failover[1].starts_with("* 1 FETCH (UID 1 FLAGS () MODSEQ ("),
        "{out}"
    );
    assert!(
        failover[2].starts_with("* 2 FETCH (UID 2 FLAGS (\\Flagged) MODSEQ ("),
        "{out}"
    );
    // Another UIDVALIDITY: the cache is void, nothing to resync.
    assert!(untagged("other_uidvalidity").is_empty(), "{out}");
    // seq-match-data is taken and changes nothing: the uids gone, then what changed since.
    for key in ["seq_match", "seq_match_no_known_uids"] {
        let got = untagged(key);
        assert_eq!(got.len(), 2, "{key}: {out}");
        assert_eq!(got[0], "* VANISHED (EARLIER) 3:4", "{key}: {out}");
        assert!(
            got[1].starts_with("* 2 FETCH (UID 2 FLAGS (\\Flagged) MODSEQ ("),
            "{key}: {out}"
        );
        let all = lines(key);
        assert!(all.contains(&"* 2 EXISTS".to_string()), "{key}: {out}");
        assert!(
            all.last().unwrap().contains(" OK [READ-ONLY] EXAMINE completed"),
            "{key}: {out}"
        );
    }
}

#[test]
fn list_extended_selects_subscribed_names_recursive_matches_patterns_and_status() {
    let mut n = imap_node("listen = \"127.0.0.1:0\"");
    let imap = n.imap(1);
    let out = python(n.tmp.path(), &imap, "list_extended", &[]);
    let lines = |key: &str| strings(&out[key]);
    assert!(lines("before_login")[0].starts_with("a0 BAD"), "{out}");
    let caps = &lines("capability")[0];
    assert!(
        caps.contains(" LIST-EXTENDED") && caps.contains(" LIST-STATUS"),
        "{out}"
    );
    assert_eq!(
        lines("patterns"),
        [
            "* LIST (\\HasNoChildren) \"/\" INBOX",
            "* LIST (\\HasNoChildren \\Sent) \"/\" Sent",
            "a1 OK LIST completed"
        ],
        "{out}"
    );
    assert_eq!(
        lines("subscribed"),
        [
            "* LIST (\\NonExistent \\HasNoChildren \\Subscribed) \"/\" Gone",
            "* LIST (\\HasNoChildren \\Subscribed) \"/\" INBOX",
            "* LIST (\\HasNoChildren \\Subscribed) \"/\" Work/Reports",
            "a2 OK LIST completed"
        ],
        "{out}"
    );
    assert_eq!(
        lines("recursive"),
        [
            "* LIST (\\NonExistent \\HasNoChildren \\Subscribed) \"/\" Gone",
            "* LIST (\\HasNoChildren \\Subscribed) \"/\" INBOX",
            "* LIST (\\HasChildren) \"/\" Work (\"CHILDINFO\" (\"SUBSCRIBED\"))",
            "a3 OK LIST completed"
        ],
        "{out}"
    );
    assert_eq!(
        lines("status"),
        [
            "* LIST (\\HasNoChildren \\Subscribed) \"/\" INBOX",
            "* STATUS INBOX (MESSAGES 2 UIDNEXT 3)",
            "* LIST (\\HasNoChildren \\Sent) \"/\" Sent",
            "* STATUS Sent (MESSAGES 0 UIDNEXT 1)",
            "* LIST (\\HasChildren) \"/\" Work",
            "* STATUS Work (MESSAGES 0 UIDNEXT 1)",
            "a4 OK LIST completed"
        ],
        "{out}"
    );
    assert!(lines("recursive_alone")[0].starts_with("a5 BAD"), "{out}");
    assert_eq!(
        lines("remote"),
        [
            "* LIST (\\HasNoChildren \\Sent) \"/\" Sent",
            "a6 OK LIST completed"
        ],
        "{out}"
    );
    assert_eq!(
        lines("root"),
        ["* LIST (\\Noselect) \"/\" \"\"", "a7 OK LIST completed"],
        "{out}"
    );
    let selected = lines("selected");
    assert_eq!(selected[0], "* LIST (\\HasNoChildren) \"/\" INBOX", "{out}");
    assert_eq!(selected[1], "* STATUS INBOX (MESSAGES 2)", "{out}");
    assert_eq!(selected.last().unwrap(), "a8 OK LIST completed", "{out}");
}

#[test]
fn special_use_marks_the_configured_mailboxes_in_list_and_selects_them() {
    // Sent renamed, Junk turned off, the rest as the defaults name them (Archive is not made).
    let mut n =
        imap_node("listen = \"127.0.0.1:0\"\n\n[imap.special_use]\nsent = \"Sent Items\"\njunk = \"\"");
    let imap = n.imap(1);
    let out = python(n.tmp.path(), &imap, "special_use", &[]);
    let lines = |key: &str| strings(&out[key]);
    let caps = strings(&out["capabilities"]);
    assert!(caps.iter().any(|c| c == "SPECIAL-USE"), "{caps:?}");
    let all = [
        "* LIST (\\HasNoChildren \\Drafts) \"/\" Drafts",
        "* LIST (\\HasNoChildren) \"/\" INBOX",
        "* LIST (\\HasNoChildren) \"/\" Junk",
        "* LIST (\\HasNoChildren \\Sent) \"/\" \"Sent Items\"",
        "* LIST (\\HasNoChildren \\Trash) \"/\" Trash",
        "* LIST (\\HasNoChildren) \"/\" Work",
    ];
    assert_eq!(lines("all")[..all.len()], all, "{out}");
    assert_eq!(lines("all")[all.len()], "a1 OK LIST completed", "{out}");
    assert_eq!(
        lines("selection"),
        [all[0], all[3], all[4], "a2 OK LIST completed"],
        "{out}"
    );
    assert_eq!(lines("return")[..all.len()], all, "{out}");
    // A client library reads the attributes.
    let listed = out["imaplib_list"].to_string();
    assert!(
        listed.contains("(\\\\HasNoChildren \\\\Sent) \\\"/\\\" \\\"Sent Items\\\""),
        "{listed}"
    );
}

#[test]
fn esearch_answers_min_max_count_all_with_the_tag_and_modseq() {
    let mut n = imap_node("listen = \"127.0.0.1:0\"");
    let imap = n.imap(1);
    let out = python(n.tmp.path(), &imap, "esearch", &[]);
    let lines = |key: &str| strings(&out[key]);
    assert!(lines("capability")[0].contains(" ESEARCH"), "{out}");
    assert!(lines("unselected")[0].starts_with("a0 BAD"), "{out}");
    assert_eq!(
        lines("uid_all_options"),
        [
            "* ESEARCH (TAG \"a1\") UID MIN 2 MAX 5 COUNT 3 ALL 2,4:5",
            "a1 OK UID SEARCH completed"
        ],
        "{out}"
    );
    assert_eq!(
        lines("empty_return"),
        ["* ESEARCH (TAG \"a2\") ALL 2,4:5", "a2 OK SEARCH completed"],
        "{out}"
    );
    assert_eq!(
        lines("count_none"),
        ["* ESEARCH (TAG \"a3\") COUNT 0", "a3 OK SEARCH completed"],
        "{out}"
    );
    assert_eq!(
        lines("min_none"),
        ["* ESEARCH (TAG \"a4\")", "a4 OK SEARCH completed"],
        "{out}"
    );
    assert_eq!(
        lines("plain"),
        ["* SEARCH 2 4 5", "a5 OK SEARCH completed"],
        "{out}"
    );
    assert!(lines("save")[0].starts_with("a6 BAD"), "{out}");
    // `* n FETCH (UID u MODSEQ (m))` for each message: the modseq of uid u.
    let modseq_of = |uid: u32| -> u64 {
        let fetched = lines("modseqs");
        let line = fetched
            .iter()
            .find(|l| l.contains(&format!("UID {uid} ")))
            .unwrap_or_else(|| panic!("uid {uid} not fetched: {out}"));
        line.rsplit_once("MODSEQ (")
            .unwrap()
            .1
            .trim_end_matches("))")
            .parse()
            .unwrap()
    };
    // MAX alone: the MAX message's modseq (RFC 7162 3.1.5).
    assert_eq!(
        lines("modseq"),
        [
            format!("* ESEARCH (TAG \"a8\") UID MAX 6 MODSEQ {}", modseq_of(6)),
            "a8 OK UID SEARCH completed".to_string()
        ],
        "{out}"
    );
    // ALL: the highest of the messages found (the three flagged ones changed last).
    let highest = [2, 4, 5].map(modseq_of).into_iter().max().unwrap();
    assert_eq!(
        lines("modseq_all"),
        [
            format!("* ESEARCH (TAG \"a9\") ALL 2,4:5 MODSEQ {highest}"),
            "a9 OK SEARCH completed".to_string()
        ],
        "{out}"
    );
}

#[test]
fn objectid_gives_mailboxid_in_select_and_status_and_emailid_threadid_in_fetch() {
    let mut n = imap_node("listen = \"127.0.0.1:0\"");
    let imap = n.imap(1);
    let out = python(n.tmp.path(), &imap, "objectid", &[]);
    let lines = |key: &str| strings(&out[key]);
    assert!(lines("before_login")[0].starts_with("a0 BAD"), "{out}");
    assert!(lines("capability")[0].contains(" OBJECTID"), "{out}");
    // `* OK [MAILBOXID (id)] ...` of SELECT/EXAMINE: 32 hex digits, the MailboxId.
    let mailbox_id = |key: &str| -> String {
        let lines = lines(key);
        let line = lines
            .iter()
            .find(|l| l.starts_with("* OK [MAILBOXID ("))
            .unwrap_or_else(|| panic!("no MAILBOXID in {key}: {out}"));
        let id = line["* OK [MAILBOXID (".len()..]
            .split_once(')')
            .unwrap()
            .0
            .to_string();
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{line}"
        );
        id
    };
    let inbox = mailbox_id("select");
    let work = mailbox_id("examine");
    assert_ne!(inbox, work);
    assert_eq!(
        lines("status_unselected"),
        [
            format!("* STATUS INBOX (MESSAGES 2 MAILBOXID ({inbox}))"),
            "a1 OK STATUS completed".to_string()
        ],
        "{out}"
    );
    assert_eq!(
        lines("status_work"),
        [
            format!("* STATUS Work (MAILBOXID ({work}))"),
            "a2 OK STATUS completed".to_string()
        ],
        "{out}"
    );
    assert!(lines("fetch_unselected")[0].starts_with("a3 BAD"), "{out}");
    // EMAILID is `M` and 32 hex digits of the content's hash, one per message.
    let fetched = lines("fetch");
    let email_ids: Vec<String> = fetched[..2]
        .iter()
        .map(|l| {
            l.split_once("EMAILID (")
                .unwrap()
                .1
                .split_once(')')
                .unwrap()
                .0
                .to_string()
        })
        .collect();
    for id in &email_ids {
        assert!(
            id.len() == 33 && id.starts_with('M') && id[1..].bytes().all(|b| b.is_ascii_hexdigit()),
            "{out}"
        );
    }
    assert_ne!(email_ids[0], email_ids[1]);
    assert_eq!(
        fetched,
        [
            format!("* 1 FETCH (FLAGS () EMAILID ({}) THREADID NIL)", email_ids[0]),
            format!("* 2 FETCH (FLAGS () EMAILID ({}) THREADID NIL)", email_ids[1]),
            "a5 OK FETCH completed".to_string()
        ],
        "{out}"
    );
    // EMAILID alone: UID stands in for the item imap-codec needs.
    assert_eq!(
        lines("fetch_one"),
        [
            format!("* 2 FETCH (UID 2 EMAILID ({}))", email_ids[1]),
            "a6 OK FETCH completed".to_string()
        ],
        "{out}"
    );
    // RFC 8474 5.1: a moved message keeps its EMAILID, and so does a copy.
    assert_eq!(
        lines("fetch_moved"),
        [
            format!("* 1 FETCH (UID 1 EMAILID ({}))", email_ids[0]),
            "a9 OK UID FETCH completed".to_string()
        ],
        "{out}"
    );
    assert!(lines("copy").last().unwrap().starts_with("b1 OK"), "{out}");
    assert_eq!(
        lines("fetch_copied"),
        [
            format!("* 1 FETCH (UID 2 EMAILID ({}))", email_ids[1]),
            format!("* 2 FETCH (UID 3 EMAILID ({}))", email_ids[0]),
            "b3 OK UID FETCH completed".to_string()
        ],
        "{out}"
    );
}

#[test]
fn metadata_sets_gets_and_removes_mailbox_annotations_within_the_limits() {
    let mut n = imap_node_with(
        "listen = \"127.0.0.1:0\"\nmetadata_max_entries = 10",
        "[limits]\nmax_annotation_bytes = 1024\n",
    );
    let imap = n.imap(1);
    let out = python(n.tmp.path(), &imap, "metadata", &[]);
    let lines = |key: &str| strings(&out[key]);
    assert!(lines("before_login")[0].starts_with("a0 BAD"), "{out}");
    assert!(lines("capability")[0].contains(" METADATA"), "{out}");
    assert!(!lines("capability")[0].contains("METADATA-SERVER"), "{out}");
    assert_eq!(lines("set"), ["a1 OK SETMETADATA completed"], "{out}");
    // The literal's lines are lines of the answer too.
    assert_eq!(
        lines("get"),
        [
            "* METADATA INBOX (/shared/comment {20}",
            "Shared",
            "comment here /private/comment \"My own comment\" /shared/missing NIL)",
            "a2 OK GETMETADATA completed"
        ],
        "{out}"
    );
    assert_eq!(
        lines("maxsize"),
        [
            "* METADATA INBOX (/private/comment \"My own comment\")",
            "a3 OK [METADATA LONGENTRIES 20] GETMETADATA completed"
        ],
        "{out}"
    );
    assert_eq!(
        lines("depth0"),
        [
            "* METADATA INBOX (/private/filters/values NIL)",
            "a5 OK GETMETADATA completed"
        ],
        "{out}"
    );
    assert_eq!(
        lines("depth1"),
        [
            "* METADATA INBOX (/private/filters/values/boss \"FROM \\\"boss@example.com\\\"\" /private/filters/values/small \"SMALLER 5000\")",
            "a6 OK GETMETADATA completed"
        ],
        "{out}"
    );
    assert_eq!(
        lines("depth_infinity"),
        [
            "* METADATA INBOX (/private/comment \"My own comment\" /private/filters/values/boss \"FROM \\\"boss@example.com\\\"\" /private/filters/values/small \"SMALLER 5000\" /private/filters/values/small/x \"deep\")",
            "a7 OK GETMETADATA completed"
        ],
        "{out}"
    );
    assert_eq!(lines("remove"), ["a8 OK SETMETADATA completed"], "{out}");
    assert_eq!(
        lines("removed"),
        [
            "* METADATA INBOX (/private/comment NIL)",
            "a9 OK GETMETADATA completed"
        ],
        "{out}"
    );
    // Over `[limits] max_annotation_bytes`: the code names the limit, and nothing of the
    // command is set.
    assert_eq!(
        lines("too_big"),
        ["b1 NO [METADATA MAXSIZE 1024] an annotation value may hold at most 1024 bytes"],
        "{out}"
    );
    assert_eq!(
        lines("not_set")[0],
        "* METADATA INBOX (/shared/small NIL)",
        "{out}"
    );
    // Nine entries, then two more with a replacement: over `[imap] metadata_max_entries`,
    // refused whole; a removal and an addition together fit.
    assert_eq!(
        lines("too_many"),
        ["b4 NO [METADATA TOOMANY] the mailbox may hold at most 10 annotations"],
        "{out}"
    );
    assert_eq!(
        lines("work")[0],
        "* METADATA Work (/shared/e1 \"1\" /shared/e10 NIL)",
        "{out}"
    );
    assert_eq!(lines("swap"), ["b6 OK SETMETADATA completed"], "{out}");
    for key in ["bad_entry", "bad_scope", "scope_set"] {
        let got = lines(key);
        assert_eq!(got.len(), 1, "{out}");
        assert!(got[0].contains(" BAD "), "{key}: {out}");
    }
    // Server annotations: none exist, and none may be made.
    assert_eq!(
        lines("server_get"),
        [
            "* METADATA \"\" (/shared/comment NIL)",
            "c1 OK GETMETADATA completed"
        ],
        "{out}"
    );
    assert!(lines("server_set")[0].starts_with("c2 NO "), "{out}");
    assert!(
        lines("missing_mailbox")[0].starts_with("c3 NO [NONEXISTENT]"),
        "{out}"
    );
    // A value with a NUL byte goes in and comes out as literal8.
    assert_eq!(lines("binary"), ["c4 OK SETMETADATA completed"], "{out}");
    assert_eq!(
        lines("binary_get"),
        [
            "* METADATA INBOX (/shared/bin ~{3}",
            "a\u{0}b)",
            "c5 OK GETMETADATA completed"
        ],
        "{out}"
    );
    // Annotations follow their mailbox through a rename.
    assert_eq!(lines("renamed")[0], "* METADATA Play (/shared/e1 \"1\")", "{out}");
    assert_eq!(
        lines("selected"),
        [
            "* METADATA INBOX (/shared/comment {20}",
            "Shared",
            "comment here)",
            "c8 OK GETMETADATA completed"
        ],
        "{out}"
    );
}

#[test]
fn mailbox_names_travel_in_modified_utf7_and_are_stored_in_utf8() {
    let mut n = imap_node("listen = \"127.0.0.1:0\"");
    let imap = n.imap(1);
    let config = n.tmp.path().join("node.toml");
    // A name made outside IMAP (the operator CLI, as LMTP's fileinto would) is UTF-8.
    support::op(
        &config,
        &["mailbox", "create", "--user", "alice", "--name", "Gelöscht"],
    )
    .expect_code(0);
    let out = python(n.tmp.path(), &imap, "utf7", &[]);
    let lines = |key: &str| strings(&out[key]);
    for key in [
        "create",
        "create_nested",
        "append",
        "copy",
        "move",
        "subscribe",
        "rename",
        "delete",
    ] {
        assert!(lines(key).last().unwrap().contains(" OK "), "{key}: {out}");
    }
    assert_eq!(
        lines("list"),
        [
            "* LIST (\\HasNoChildren) \"/\" Entw&APw-rfe",
            "* LIST (\\HasNoChildren) \"/\" Gel&APY-scht",
            "* LIST (\\HasNoChildren) \"/\" INBOX",
            "* LIST (\\HasChildren) \"/\" Q&-A",
            "* LIST (\\HasNoChildren) \"/\" Q&-A/&ZeVnLIqe-",
            "a3 OK LIST completed"
        ],
        "{out}"
    );
    assert_eq!(
        lines("pattern"),
        [
            "* LIST (\\HasNoChildren) \"/\" Q&-A/&ZeVnLIqe-",
            "a4 OK LIST completed"
        ],
        "{out}"
    );
    assert_eq!(
        lines("status"),
        ["* STATUS Entw&APw-rfe (MESSAGES 0)", "a5 OK STATUS completed"],
        "{out}"
    );
    assert!(lines("select").iter().any(|l| l == "* 1 EXISTS"), "{out}");
    assert_eq!(
        lines("lsub"),
        ["* LSUB () \"/\" Gel&APY-scht", "b2 OK LSUB completed"],
        "{out}"
    );
    assert_eq!(
        lines("list_extended"),
        [
            "* LIST (\\HasNoChildren) \"/\" Bo&AO4-te",
            "* STATUS Bo&AO4-te (MESSAGES 0)",
            "* LIST (\\HasNoChildren) \"/\" Q&-A/&ZeVnLIqe-",
            "* STATUS Q&-A/&ZeVnLIqe- (MESSAGES 1)",
            "b4 OK LIST completed"
        ],
        "{out}"
    );
    assert!(
        lines("status_objectid")[0].starts_with("* STATUS Gel&APY-scht (MESSAGES 1 MAILBOXID ("),
        "{out}"
    );
    // Names that are not modified UTF-7: refused, saying why.
    for (key, tag) in [
        ("unterminated", "b6"),
        ("not_canonical", "b7"),
        ("raw_utf8", "b8"),
        ("bad_pattern", "b9"),
    ] {
        let got = lines(key);
        assert_eq!(got.len(), 1, "{out}");
        assert!(
            got[0].starts_with(&format!("{tag} NO [CANNOT] invalid mailbox name ")),
            "{out}"
        );
        assert!(got[0].contains("not modified UTF-7 (RFC 3501 5.1.3)"), "{out}");
    }
    // The store holds the names in UTF-8, as every other front end and the CLI name them.
    let listed = support::op(&config, &["mailbox", "list", "--user", "alice"]);
    listed.expect_code(0);
    for name in ["Boîte", "Gelöscht", "Q&A"] {
        assert!(
            listed.stdout.lines().any(|l| l.split('\t').next() == Some(name)),
            "{name}: {}",
            listed.stdout
        );
    }
    assert!(
        !listed.stdout.contains("Q&A/日本語"),
        "deleted: {}",
        listed.stdout
    );
}

#[test]
fn create_special_use_records_the_use_with_the_mailbox_and_list_shows_it() {
    // No configured uses: what LIST shows comes from the mailboxes alone.
    let mut n = imap_node(
        "listen = \"127.0.0.1:0\"\n\n[imap.special_use]\ndrafts = \"\"\nsent = \"\"\ntrash = \"\"\njunk = \"\"\narchive = \"\"",
    );
    let imap = n.imap(1);
    let out = python(n.tmp.path(), &imap, "create_special_use", &[]);
    let lines = |key: &str| strings(&out[key]);
    assert!(lines("before_login")[0].starts_with("a0 BAD"), "{out}");
    assert!(lines("capability")[0].contains(" CREATE-SPECIAL-USE"), "{out}");
    assert_eq!(lines("create"), ["a1 OK CREATE completed"], "{out}");
    assert_eq!(lines("plain"), ["a2 OK CREATE completed"], "{out}");
    assert_eq!(
        lines("unknown"),
        ["a3 NO [USEATTR] special use \\All is not offered here (only \\Drafts, \\Sent, \\Trash, \\Junk, \\Archive)"],
        "{out}"
    );
    assert_eq!(lines("not_made"), ["a4 OK LIST completed"], "{out}");
    assert_eq!(
        lines("selection"),
        [
            "* LIST (\\HasNoChildren \\Sent \\Archive) \"/\" \"Sent Mail\"",
            "a5 OK LIST completed"
        ],
        "{out}"
    );
    // The use is the mailbox's RFC 6154 4 annotation: it replicates and follows a rename.
    assert_eq!(
        lines("metadata")[0],
        "* METADATA \"Sent Mail\" (/private/specialuse \"\\\\Sent \\\\Archive\")",
        "{out}"
    );
    assert!(lines("exists")[0].starts_with("a7 NO [ALREADYEXISTS]"), "{out}");
    assert_eq!(
        lines("renamed"),
        [
            "* LIST (\\HasNoChildren \\Sent \\Archive) \"/\" Outbox",
            "a9 OK LIST completed"
        ],
        "{out}"
    );
    assert!(lines("bad")[0].starts_with("b1 BAD"), "{out}");
    // SETMETADATA may change a use too, checked and spelled as this server spells it.
    assert_eq!(lines("set_use"), ["b2 OK SETMETADATA completed"], "{out}");
    assert_eq!(
        lines("set_unknown"),
        ["b3 NO [USEATTR] \\All is not a special use offered here (\\Drafts, \\Sent, \\Trash, \\Junk, \\Archive)"],
        "{out}"
    );
    assert_eq!(
        lines("set_listed"),
        [
            "* LIST (\\HasNoChildren \\Sent \\Archive) \"/\" Outbox",
            "* LIST (\\HasNoChildren \\Junk) \"/\" Stuff",
            "b4 OK LIST completed"
        ],
        "{out}"
    );
    assert_eq!(
        lines("set_stored")[0],
        "* METADATA Stuff (/private/specialuse \"\\\\Junk\")",
        "{out}"
    );
}
