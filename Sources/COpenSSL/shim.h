// The system OpenSSL (libssl-dev), seen from Swift. OpenSSL exposes several calls as macros, which Swift cannot
// import; these inline functions give them callable names.
#ifndef LB_COPENSSL_SHIM_H
#define LB_COPENSSL_SHIM_H

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

static inline long lb_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version) {
    return SSL_CTX_set_min_proto_version(ctx, version);
}

static inline long lb_SSL_set_tlsext_host_name(SSL *ssl, const char *name) {
    return SSL_set_tlsext_host_name(ssl, name);
}

// Empties this thread's OpenSSL error queue before a call whose outcome SSL_get_error reads. ERR_clear_error
// itself walks all 16 slots of the queue and frees each slot's data, even when the queue is empty, as it nearly
// always is: peeking first makes the usual case a look at the queue's two ends.
static inline void lb_ERR_clear(void) {
    if (ERR_peek_error() != 0) ERR_clear_error();
}

// A BIO method's callbacks report "nothing to read yet" and clear that report through these macros.
static inline void lb_BIO_set_retry_read(BIO *bio) { BIO_set_retry_read(bio); }
static inline void lb_BIO_clear_retry_flags(BIO *bio) { BIO_clear_retry_flags(bio); }
static inline int lb_BIO_TYPE_SOURCE_SINK(void) { return BIO_TYPE_SOURCE_SINK; }

static inline long lb_SSL_CTX_set_mode(SSL_CTX *ctx, long mode) {
    return SSL_CTX_set_mode(ctx, mode);
}

static inline long lb_SSL_CTX_set_options(SSL_CTX *ctx, long options) {
    return (long)SSL_CTX_set_options(ctx, (uint64_t)options);
}

static inline int lb_TLS1_2_VERSION(void) { return TLS1_2_VERSION; }
static inline long lb_SSL_MODE_RELEASE_BUFFERS(void) { return SSL_MODE_RELEASE_BUFFERS; }
static inline long lb_SSL_OP_NO_RENEGOTIATION(void) { return SSL_OP_NO_RENEGOTIATION; }

/// Chooses "http/1.1" from the client's ALPN list; lbd's proxy speaks HTTP/1.1 only.
static inline int lb_alpn_select_http11(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                                        const unsigned char *in, unsigned int inlen, void *arg) {
    (void)ssl; (void)arg;
    static const unsigned char supported[] = { 8, 'h', 't', 't', 'p', '/', '1', '.', '1' };
    if (SSL_select_next_proto((unsigned char **)out, outlen, supported, sizeof(supported), in, inlen)
            == OPENSSL_NPN_NEGOTIATED) {
        return SSL_TLSEXT_ERR_OK;
    }
    // No common protocol: carry on without ALPN rather than fail clients that send other lists.
    return SSL_TLSEXT_ERR_NOACK;
}

static inline void lb_SSL_CTX_use_http11_alpn(SSL_CTX *ctx) {
    SSL_CTX_set_alpn_select_cb(ctx, lb_alpn_select_http11, NULL);
}

/// Certificates chosen by the name a client asks for (SNI). The default context's own certificate answers when
/// no name is sent or none matches.
typedef struct {
    SSL_CTX **contexts;
    int count;
} lb_sni_table;

static inline int lb_sni_select(SSL *ssl, int *alert, void *arg) {
    (void)alert;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    const lb_sni_table *table = (const lb_sni_table *)arg;
    if (name == NULL || table == NULL) return SSL_TLSEXT_ERR_OK;
    for (int i = 0; i < table->count; i++) {
        X509 *certificate = SSL_CTX_get0_certificate(table->contexts[i]);
        if (certificate != NULL && X509_check_host(certificate, name, 0, 0, NULL) == 1) {
            SSL_set_SSL_CTX(ssl, table->contexts[i]);
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_OK;
}

static inline void lb_SSL_CTX_set_sni_table(SSL_CTX *ctx, lb_sni_table *table) {
    SSL_CTX_set_tlsext_servername_callback(ctx, lb_sni_select);
    SSL_CTX_set_tlsext_servername_arg(ctx, table);
}

#endif
