#include "support/auth_material.h"

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

namespace leader::testing {
namespace {

struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct MdCtxFree {
  void operator()(EVP_MD_CTX* p) const { EVP_MD_CTX_free(p); }
};
struct X509Free {
  void operator()(X509* p) const { X509_free(p); }
};
struct BioFree {
  void operator()(BIO* p) const { BIO_free(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;
using BioPtr = std::unique_ptr<BIO, BioFree>;

[[noreturn]] void fail(const std::string& what) { throw std::runtime_error("auth_material: " + what); }

void check(bool ok, const char* what) {
  if (!ok) fail(what);
}

std::string random_bytes(std::size_t n) {
  std::string out(n, '\0');
  check(RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(n)) == 1, "RAND_bytes");
  return out;
}

std::string hex(std::string_view bytes, bool upper) {
  const char* digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

/// `bytes` as characters of `alphabet`, `bits` bits each (5: base32, 6:
/// base64), the last one zero-padded; no '=' padding.
std::string encode_bits(std::string_view bytes, int bits, const char* alphabet) {
  std::string out;
  std::uint32_t acc = 0;
  int have = 0;
  const std::uint32_t mask = (1U << bits) - 1;
  for (unsigned char c : bytes) {
    acc = (acc << 8) | c;
    have += 8;
    while (have >= bits) {
      have -= bits;
      out.push_back(alphabet[(acc >> have) & mask]);
    }
  }
  if (have > 0) out.push_back(alphabet[(acc << (bits - have)) & mask]);
  return out;
}

std::string base64(std::string_view bytes, bool url) {
  std::string out = encode_bits(bytes, 6,
                                url ? "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                                    : "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/");
  if (!url) {
    while (out.size() % 4 != 0) out.push_back('=');
  }
  return out;
}

/// RFC 4648 base32 without padding, as NKeys use it.
std::string base32(std::string_view bytes) {
  return encode_bits(bytes, 5, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567");
}

/// CRC-16/XMODEM (polynomial 0x1021, initial 0), as NKeys use it.
std::uint16_t crc16(std::string_view bytes) {
  std::uint16_t crc = 0;
  for (unsigned char c : bytes) {
    crc ^= static_cast<std::uint16_t>(c << 8);
    for (int i = 0; i < 8; ++i) {
      crc = (crc & 0x8000) != 0 ? static_cast<std::uint16_t>((crc << 1) ^ 0x1021)
                                : static_cast<std::uint16_t>(crc << 1);
    }
  }
  return crc;
}

/// Base32 of `raw` followed by its CRC16, little-endian.
std::string nkey_encode(std::string raw) {
  const std::uint16_t crc = crc16(raw);
  raw.push_back(static_cast<char>(crc & 0xff));
  raw.push_back(static_cast<char>(crc >> 8));
  return base32(raw);
}

PkeyPtr ed25519_from_seed(const std::string& raw_seed) {
  PkeyPtr key(EVP_PKEY_new_raw_private_key(
      EVP_PKEY_ED25519, nullptr, reinterpret_cast<const unsigned char*>(raw_seed.data()), raw_seed.size()));
  check(key != nullptr, "EVP_PKEY_new_raw_private_key");
  return key;
}

std::string pem_of_private_key(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  check(bio && PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) == 1,
        "PEM_write_bio_PrivateKey");
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(n));
}

std::string pem_of_certificate(X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  check(bio && PEM_write_bio_X509(bio.get(), cert) == 1, "PEM_write_bio_X509");
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(n));
}

/// The private scalar of an EC key, 32 bytes big-endian.
std::string ec_private_bytes(EVP_PKEY* key) {
  BIGNUM* priv = nullptr;
  check(EVP_PKEY_get_bn_param(key, "priv", &priv) == 1, "EVP_PKEY_get_bn_param(priv)");
  std::string out(32, '\0');
  const int n = BN_bn2binpad(priv, reinterpret_cast<unsigned char*>(out.data()), 32);
  BN_clear_free(priv);
  check(n == 32, "BN_bn2binpad");
  return out;
}

struct Issued {
  PkeyPtr key;
  X509Ptr cert;
  std::string key_pem;
  std::string cert_pem;
};

void add_extension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  check(ext != nullptr, "X509V3_EXT_conf_nid");
  const int ok = X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
  check(ok == 1, "X509_add_ext");
}

/// A certificate for `cn` with a new P-256 key, signed by `issuer` (self
/// signed when null). `san`: subjectAltName value, or null.
Issued issue(const std::string& cn, const Issued* issuer, bool ca, const char* san) {
  Issued out;
  out.key.reset(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  check(out.key != nullptr, "EVP_PKEY_Q_keygen(EC)");
  out.cert.reset(X509_new());
  X509* cert = out.cert.get();
  check(cert != nullptr, "X509_new");
  check(X509_set_version(cert, 2) == 1, "X509_set_version");
  const std::string serial = random_bytes(8);
  BIGNUM* bn = BN_bin2bn(reinterpret_cast<const unsigned char*>(serial.data()), 8, nullptr);
  check(bn != nullptr && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert)) != nullptr, "serial");
  BN_free(bn);
  X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert), 24L * 3600);
  check(X509_set_pubkey(cert, out.key.get()) == 1, "X509_set_pubkey");
  X509_NAME* name = X509_get_subject_name(cert);
  check(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                   reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0) == 1,
        "X509_NAME_add_entry_by_txt");
  X509* signer_cert = issuer != nullptr ? issuer->cert.get() : cert;
  EVP_PKEY* signer_key = issuer != nullptr ? issuer->key.get() : out.key.get();
  check(X509_set_issuer_name(cert, X509_get_subject_name(signer_cert)) == 1, "X509_set_issuer_name");
  if (ca) {
    add_extension(cert, signer_cert, NID_basic_constraints, "critical,CA:TRUE");
    add_extension(cert, signer_cert, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    add_extension(cert, signer_cert, NID_basic_constraints, "critical,CA:FALSE");
    add_extension(cert, signer_cert, NID_key_usage, "critical,digitalSignature");
    add_extension(cert, signer_cert, NID_ext_key_usage, "serverAuth,clientAuth");
  }
  add_extension(cert, signer_cert, NID_subject_key_identifier, "hash");
  if (san != nullptr) add_extension(cert, signer_cert, NID_subject_alt_name, san);
  check(X509_sign(cert, signer_key, EVP_sha256()) > 0, "X509_sign");
  out.key_pem = pem_of_private_key(out.key.get());
  out.cert_pem = pem_of_certificate(cert);
  return out;
}

std::int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

/// A JWT of NATS's kind: claims signed by `issuer` with ed25519.
std::string jwt(const NKey& issuer, const NKey& subject, const std::string& name, const std::string& nats) {
  const std::string header = base64(R"({"typ":"JWT","alg":"ed25519-nkey"})", true);
  const std::string claims = R"({"jti":")" + base32(random_bytes(32)) + R"(","iat":)" +
                             std::to_string(unix_now()) + R"(,"iss":")" + issuer.public_key +
                             R"(","name":")" + name + R"(","sub":")" + subject.public_key + R"(","nats":)" +
                             nats + "}";
  const std::string signing_input = header + "." + base64(claims, true);
  return signing_input + "." + issuer.sign_base64url(signing_input);
}

std::string account_claims(bool jetstream) {
  std::string limits =
      R"("subs":-1,"data":-1,"payload":-1,"imports":-1,"exports":-1,"wildcards":true,"conn":-1,"leaf":-1)";
  if (jetstream) limits += R"(,"mem_storage":-1,"disk_storage":-1,"streams":-1,"consumer":-1)";
  return R"({"limits":{)" + limits +
         R"(},"default_permissions":{"pub":{},"sub":{}},"type":"account","version":2})";
}

std::string creds(const std::string& user_jwt, const NKey& user) {
  return "-----BEGIN NATS USER JWT-----\n" + user_jwt +
         "\n------END NATS USER JWT------\n\n"
         "************************* IMPORTANT *************************\n"
         "NKEY Seed printed below can be used to sign and prove identity.\n"
         "NKEYs are sensitive and should be treated as secrets.\n\n"
         "-----BEGIN USER NKEY SEED-----\n" +
         user.seed +
         "\n------END USER NKEY SEED------\n\n"
         "*************************************************************\n";
}

}  // namespace

TempDir::TempDir() {
  std::string base = "/tmp";
  if (const char* tmp = std::getenv("TMPDIR"); tmp != nullptr && *tmp != '\0') base = tmp;
  std::string tmpl = base + "/leader-auth-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) {
    throw std::system_error(errno, std::generic_category(), "TempDir: mkdtemp in " + base);
  }
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string TempDir::write(const std::string& name, const std::string& contents) const {
  std::string file = path_ + "/" + name;
  {
    std::ofstream out(file, std::ios::binary | std::ios::trunc);
    out << contents;
    if (!out) throw std::runtime_error("TempDir: cannot write " + file);
  }
  ::chmod(file.c_str(), 0600);
  return file;
}

void Secrets::add(const std::string& secret, std::size_t skip) {
  if (secret.empty()) return;
  needles_.push_back(secret);
  if (skip > 0 && skip + 8 < secret.size()) needles_.push_back(secret.substr(skip));
}

void Secrets::add_private_key(const std::string& raw, const std::string& pem) {
  needles_.push_back(hex(raw, false));
  needles_.push_back(hex(raw, true));
  needles_.push_back(base64(raw, false).substr(0, 40));
  // The PEM's base64 characters that encode only the key's own bytes,
  // found through its DER, in pieces that do not cross a line break.
  std::string body;
  std::size_t begin = pem.find('\n');
  const std::size_t end = pem.find("-----END");
  if (begin == std::string::npos || end == std::string::npos) fail("not a PEM key");
  for (std::size_t i = begin + 1; i < end; ++i) {
    if (pem[i] != '\n' && pem[i] != '\r') body.push_back(pem[i]);
  }
  BioPtr mem(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  PkeyPtr key(PEM_read_bio_PrivateKey(mem.get(), nullptr, nullptr, nullptr));
  check(key != nullptr, "PEM_read_bio_PrivateKey");
  PKCS8_PRIV_KEY_INFO* p8 = EVP_PKEY2PKCS8(key.get());
  check(p8 != nullptr, "EVP_PKEY2PKCS8");
  unsigned char* p8der = nullptr;
  const int p8_len = i2d_PKCS8_PRIV_KEY_INFO(p8, &p8der);
  PKCS8_PRIV_KEY_INFO_free(p8);
  check(p8_len > 0, "i2d_PKCS8_PRIV_KEY_INFO");
  const std::string der_text(reinterpret_cast<char*>(p8der), static_cast<std::size_t>(p8_len));
  OPENSSL_free(p8der);
  const std::size_t at = der_text.find(raw);
  if (at == std::string::npos) fail("private key bytes not found in the key's DER");
  const std::size_t first = (at + 2) / 3 * 3;          // first byte on a 3-byte boundary
  const std::size_t last = (at + raw.size()) / 3 * 3;  // end of the last whole group
  const std::size_t from = first / 3 * 4;
  const std::size_t to = last / 3 * 4;
  constexpr std::size_t kPiece = 12;
  for (std::size_t i = from; i + kPiece <= to && i + kPiece <= body.size(); ++i) {
    // Pieces of the body as it is, and as the file has it (64 per line).
    if (i / 64 == (i + kPiece - 1) / 64 && i % 4 == 0) needles_.push_back(body.substr(i, kPiece));
  }
}

void Secrets::add(const Secrets& other) {
  needles_.insert(needles_.end(), other.needles_.begin(), other.needles_.end());
}

std::optional<std::string> Secrets::find_in(std::string_view text) const {
  for (const auto& n : needles_) {
    if (text.find(n) != std::string_view::npos) return n;
  }
  return std::nullopt;
}

NKey NKey::generate(Type type) {
  NKey k;
  k.raw_seed = random_bytes(32);
  const PkeyPtr key = ed25519_from_seed(k.raw_seed);
  std::string pub(32, '\0');
  std::size_t len = pub.size();
  check(EVP_PKEY_get_raw_public_key(key.get(), reinterpret_cast<unsigned char*>(pub.data()), &len) == 1 &&
            len == 32,
        "EVP_PKEY_get_raw_public_key");
  // Prefix bytes: 'O' 14 << 3, 'A' 0, 'U' 20 << 3; a seed is 'S' (18 << 3)
  // with the key's prefix in the next five bits.
  unsigned char prefix = 0;
  switch (type) {
    case Type::operator_key:
      prefix = 14 << 3;
      break;
    case Type::account:
      prefix = 0;
      break;
    case Type::user:
      prefix = 20 << 3;
      break;
  }
  k.public_key = nkey_encode(std::string(1, static_cast<char>(prefix)) + pub);
  std::string seed;
  seed.push_back(static_cast<char>((18 << 3) | (prefix >> 5)));
  seed.push_back(static_cast<char>((prefix & 31) << 3));
  k.seed = nkey_encode(seed + k.raw_seed);
  return k;
}

std::string NKey::sign_base64url(std::string_view data) const {
  const PkeyPtr key = ed25519_from_seed(raw_seed);
  std::unique_ptr<EVP_MD_CTX, MdCtxFree> ctx(EVP_MD_CTX_new());
  check(ctx && EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, key.get()) == 1,
        "EVP_DigestSignInit");
  std::string sig(64, '\0');
  std::size_t len = sig.size();
  check(EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                       reinterpret_cast<const unsigned char*>(data.data()), data.size()) == 1,
        "EVP_DigestSign");
  sig.resize(len);
  return base64(sig, true);
}

Secrets NKey::secrets() const {
  Secrets s;
  s.add(seed, 2);
  s.add(hex(raw_seed, false));
  s.add(hex(raw_seed, true));
  s.add(base64(raw_seed, false).substr(0, 40));
  return s;
}

TlsMaterial TlsMaterial::generate(const TempDir& dir) {
  TlsMaterial m;
  const Issued ca = issue("leader test CA", nullptr, true, nullptr);
  const Issued server = issue("localhost", &ca, false, "DNS:localhost,IP:127.0.0.1");
  const Issued client = issue("leader test client", &ca, false, nullptr);
  const Issued other_ca = issue("leader other CA", nullptr, true, nullptr);
  const Issued other_client = issue("leader other client", &other_ca, false, nullptr);
  m.ca_file = dir.write("ca.pem", ca.cert_pem);
  m.server_cert_file = dir.write("server.pem", server.cert_pem);
  m.server_key_file = dir.write("server-key.pem", server.key_pem);
  m.client_cert_file = dir.write("client.pem", client.cert_pem);
  m.client_key_file = dir.write("client-key.pem", client.key_pem);
  m.other_ca_file = dir.write("other-ca.pem", other_ca.cert_pem);
  m.other_client_cert_file = dir.write("other-client.pem", other_client.cert_pem);
  m.other_client_key_file = dir.write("other-client-key.pem", other_client.key_pem);
  for (const Issued* i : {&ca, &server, &client, &other_ca, &other_client}) {
    m.secrets.add_private_key(ec_private_bytes(i->key.get()), i->key_pem);
  }
  return m;
}

std::string TlsMaterial::server_config(bool verify_clients) const {
  std::string c = "tls {\n  cert_file: \"" + server_cert_file + "\"\n  key_file: \"" + server_key_file +
                  "\"\n  timeout: 2\n";
  if (verify_clients) c += "  ca_file: \"" + ca_file + "\"\n  verify: true\n";
  return c + "}\n";
}

OperatorMaterial OperatorMaterial::generate(const TempDir& dir) {
  OperatorMaterial m;
  const NKey op = NKey::generate(NKey::Type::operator_key);
  const NKey sys = NKey::generate(NKey::Type::account);
  const NKey account = NKey::generate(NKey::Type::account);
  const NKey user = NKey::generate(NKey::Type::user);
  const NKey stranger_account = NKey::generate(NKey::Type::account);
  const NKey stranger = NKey::generate(NKey::Type::user);

  const std::string operator_jwt =
      jwt(op, op, "leader-test-operator",
          R"({"system_account":")" + sys.public_key + R"(","type":"operator","version":2})");
  const std::string sys_jwt = jwt(op, sys, "SYS", account_claims(false));
  const std::string account_jwt = jwt(op, account, "leader-test", account_claims(true));
  const std::string user_claims =
      R"({"pub":{},"sub":{},"subs":-1,"data":-1,"payload":-1,"type":"user","version":2})";
  const std::string user_jwt = jwt(account, user, "leader-test-user", user_claims);
  const std::string stranger_jwt = jwt(stranger_account, stranger, "stranger", user_claims);

  m.creds_file = dir.write("user.creds", creds(user_jwt, user));
  m.foreign_creds_file = dir.write("stranger.creds", creds(stranger_jwt, stranger));
  const std::string operator_file = dir.write("operator.jwt", operator_jwt);
  m.server_config = "operator: \"" + operator_file + "\"\nsystem_account: " + sys.public_key +
                    "\nresolver: MEMORY\nresolver_preload: {\n  " + sys.public_key + ": \"" + sys_jwt +
                    "\"\n  " + account.public_key + ": \"" + account_jwt + "\"\n}\n";
  for (const NKey* k : {&op, &sys, &account, &user, &stranger_account, &stranger}) {
    m.secrets.add(k->secrets());
  }
  return m;
}

}  // namespace leader::testing
