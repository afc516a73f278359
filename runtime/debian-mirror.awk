# The first enabled http(s) `deb` source of a Debian release in apt's files (runtime/debian-mirror.sh):
# one-line entries (`deb [options] URI SUITE COMPONENTS`) in *.list files, deb822 stanzas (Types,
# URIs, Suites, Enabled; blank lines between them, field names in any case) in *.sources files.
function release(suites,   n, i, s) {
  n = split(suites, s, /[ \t]+/)
  for (i = 1; i <= n; i++) if (s[i] != "" && s[i] !~ /-/ && s[i] !~ /\//) return 1
  return 0
}
function first_http(uris,   n, i, u) {
  n = split(uris, u, /[ \t]+/)
  for (i = 1; i <= n; i++) if (u[i] ~ /^https?:\/\//) return u[i]
  return ""
}
function stanza_end(   uri) {
  if (types ~ /(^|[ \t])deb([ \t]|$)/ && tolower(enabled) != "no" && release(suites)) {
    uri = first_http(uris)
    if (uri != "") { print uri; found = 1; exit }
  }
  types = ""; uris = ""; suites = ""; enabled = ""
}
FNR == 1 && NR > 1 && deb822 { stanza_end() }
FNR == 1 { deb822 = FILENAME ~ /\.sources$/ }
/^[ \t]*#/ { next }
!deb822 {
  line = $0; sub(/\[[^]]*\]/, "", line)
  n = split(line, f, /[ \t]+/); k = (f[1] == "") ? 2 : 1
  if (f[k] == "deb" && f[k + 1] ~ /^https?:\/\// && release(f[k + 2])) { print f[k + 1]; found = 1; exit }
  next
}
/^[ \t]*$/ { stanza_end(); next }
/^[ \t]/ { if (field == "uris") uris = uris " " $0; else if (field == "suites") suites = suites " " $0; next }
{
  field = tolower(substr($0, 1, index($0, ":") - 1)); value = substr($0, index($0, ":") + 1)
  gsub(/^[ \t]+|[ \t]+$/, "", value)
  if (field == "types") types = value; else if (field == "uris") uris = value
  else if (field == "suites") suites = value; else if (field == "enabled") enabled = value
}
END { if (!found && deb822) stanza_end() }
