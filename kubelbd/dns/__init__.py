"""kubelbd's DNS publisher: every host it serves as a record in an authoritative zone, next to
an ownership TXT in external-dns's registry format (`records`, pure), written by RFC 2136
dynamic updates signed with TSIG and read back by zone transfer (`rfc2136`)."""
