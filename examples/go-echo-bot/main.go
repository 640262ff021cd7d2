// Command go-echo-bot is a Knowlarity gateway bot in Go: it plays every caller
// audio chunk straight back to the caller, byte for byte.
//
// It shows everything a bot in another language needs (docs/bots.md, "A bot in
// another language"): join a consumer group on <prefix>.calls.inbound, decode
// InboundRecord values, and produce Command values to the call's reply topic,
// keyed by call id. The reply topic comes from the kgw-reply-topic header that
// the node puts on every record of a call, so an instance handed a partition
// mid-call answers at once; the started record's reply_topic is the fallback.
package main

//go:generate ../../proto/node_modules/.bin/buf generate

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
	"google.golang.org/protobuf/proto"

	gatewayv1 "knowlarity-gateway/examples/go-echo-bot/gen/knowlarity/gateway/v1"
)

// headerReplyTopic is gateway/topics.py's HEADER_REPLY_TOPIC.
const headerReplyTopic = "kgw-reply-topic"

func main() {
	kafka := flag.String("kafka", env("KGW_KAFKA", "127.0.0.1:9092"),
		"Kafka bootstrap servers, HOST:PORT[,HOST:PORT...] (env KGW_KAFKA)")
	prefix := flag.String("topic-prefix", env("KGW_TOPIC_PREFIX", "knowlarity"),
		"prefix of every topic name (env KGW_TOPIC_PREFIX)")
	group := flag.String("group", env("KGW_BOT_GROUP", "knowlarity-go-echo-bot"),
		"consumer group id, the same for every replica (env KGW_BOT_GROUP)")
	maxBacklog := flag.Duration("max-backlog", envDuration("KGW_BOT_MAX_BACKLOG", 2*time.Second),
		"skip caller audio the node received longer ago than this: a stale backlog after a "+
			"restart or rebalance is not worth answering (env KGW_BOT_MAX_BACKLOG)")
	// Kafka access: the gateway's own settings and environment variables (README,
	// "Kafka security"); OAUTHBEARER and client certificates are left out here.
	protocol := flag.String("kafka-security-protocol", env("KGW_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
		"PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (env KGW_KAFKA_SECURITY_PROTOCOL)")
	mechanism := flag.String("kafka-sasl-mechanism", env("KGW_KAFKA_SASL_MECHANISM", "PLAIN"),
		"PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (env KGW_KAFKA_SASL_MECHANISM)")
	username := flag.String("kafka-sasl-username", env("KGW_KAFKA_SASL_USERNAME", ""),
		"SASL user name (env KGW_KAFKA_SASL_USERNAME)")
	passwordFile := flag.String("kafka-sasl-password-file", env("KGW_KAFKA_SASL_PASSWORD_FILE", ""),
		"file holding the SASL password, or set KGW_KAFKA_SASL_PASSWORD (env KGW_KAFKA_SASL_PASSWORD_FILE)")
	caFile := flag.String("kafka-ssl-ca-file", env("KGW_KAFKA_SSL_CA_FILE", ""),
		"PEM file of the brokers' CAs; empty: the system's (env KGW_KAFKA_SSL_CA_FILE)")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	access, err := accessOptions(*protocol, *mechanism, *username, *passwordFile, *caFile)
	if err != nil {
		log.Fatalf("kafka access: %v", err)
	}

	client, err := kgo.NewClient(append(access,
		kgo.SeedBrokers(strings.Split(*kafka, ",")...),
		kgo.ConsumerGroup(*group),
		kgo.ConsumeTopics(*prefix+".calls.inbound"),
		// With no committed offset a new group starts a minute back (franz-go's
		// default): it learns the calls already running and skips their old audio.
		// Offsets are committed only for records whose echo the broker took
		// (at least once); rebalances wait until a poll's records are handled.
		kgo.AutoCommitMarks(),
		kgo.AutoCommitInterval(time.Second),
		kgo.BlockRebalanceOnPoll(),
		kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
			for topic, parts := range m {
				log.Printf("event=ready topic=%s partitions=%v", topic, parts)
			}
		}),
		// The producer is idempotent with acks=all by default: a call's commands
		// (all keyed by its id, so on one partition) keep their order.
		kgo.ProducerLinger(time.Millisecond),
		// franz-go compresses with snappy by default. The node reads every codec, but
		// a 1 ms linger makes batches of a command or two, where compression saves
		// little of the PCM and adds to each command's way to the caller.
		kgo.ProducerBatchCompression(kgo.NoCompression()),
	)...)
	if err != nil {
		log.Fatalf("kafka client: %v", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	bot := &echoBot{client: client, maxBacklog: *maxBacklog, replyTopics: map[string]string{}}
	log.Printf("event=started kafka=%s topic=%s.calls.inbound group=%s", *kafka, *prefix, *group)
	bot.run(ctx)
	client.CloseAllowingRebalance() // commits what was marked, then leaves the group
	log.Printf("event=stopped echoed=%d", bot.echoed)
}

type echoBot struct {
	client      *kgo.Client
	maxBacklog  time.Duration
	replyTopics map[string]string // call id -> reply topic, from started records
	commandSeq  uint64
	echoed      uint64
}

func (b *echoBot) run(ctx context.Context) {
	for {
		fetches := b.client.PollFetches(ctx)
		if ctx.Err() != nil || fetches.IsClientClosed() {
			return
		}
		fetches.EachError(func(topic string, partition int32, err error) {
			log.Printf("event=fetch_error topic=%s partition=%d error=%v", topic, partition, err)
		})
		records := fetches.Records()
		for _, rec := range records {
			b.handle(rec)
		}
		// Mark a poll's records for the next commit once their echoes are on the broker.
		if err := b.client.Flush(ctx); err == nil {
			b.client.MarkCommitRecords(records...)
		}
		b.client.AllowRebalance()
	}
}

func (b *echoBot) handle(rec *kgo.Record) {
	var in gatewayv1.InboundRecord
	if err := proto.Unmarshal(rec.Value, &in); err != nil {
		log.Printf("event=bad_record offset=%d error=%v", rec.Offset, err)
		return
	}
	callID := in.GetCallId()
	switch body := in.Body.(type) {
	case *gatewayv1.InboundRecord_Started:
		b.replyTopics[callID] = body.Started.GetReplyTopic()
		log.Printf("event=call_started call_id=%s sample_rate=%d", callID, body.Started.GetSampleRate())
	case *gatewayv1.InboundRecord_Ended:
		delete(b.replyTopics, callID)
		log.Printf("event=call_ended call_id=%s reason=%s", callID, body.Ended.GetReason())
	case *gatewayv1.InboundRecord_Audio:
		b.echo(rec, callID, body.Audio)
	case *gatewayv1.InboundRecord_CommandRejected:
		log.Printf("event=command_rejected call_id=%s command_id=%s reason=%q",
			callID, body.CommandRejected.GetCommandId(), body.CommandRejected.GetReason())
	} // playback and provider events, and bodies newer than this code: nothing to echo
}

func (b *echoBot) echo(rec *kgo.Record, callID string, audio *gatewayv1.CallerAudio) {
	if age := time.Since(time.UnixMicro(audio.GetReceivedUnixUs())); age > b.maxBacklog {
		return
	}
	replyTopic := header(rec, headerReplyTopic)
	if replyTopic == "" {
		replyTopic = b.replyTopics[callID]
	}
	if replyTopic == "" {
		log.Printf("event=no_reply_topic call_id=%s", callID)
		return
	}
	b.commandSeq++
	cmd := &gatewayv1.Command{
		CallId: callID,
		// Printable and at most 128 characters, as the node requires.
		CommandId:  fmt.Sprintf("go-echo-%d", b.commandSeq),
		SentUnixUs: time.Now().UnixMicro(), // the node rejects commands older than 30 s
		Body: &gatewayv1.Command_Play{Play: &gatewayv1.PlayAudio{
			Pcm:        audio.GetPcm(),
			SampleRate: audio.GetSampleRate(),
		}},
	}
	value, err := proto.Marshal(cmd)
	if err != nil {
		log.Printf("event=encode_failed call_id=%s error=%v", callID, err)
		return
	}
	out := &kgo.Record{Topic: replyTopic, Key: []byte(callID), Value: value}
	b.client.Produce(context.Background(), out, func(r *kgo.Record, err error) {
		if err != nil {
			log.Printf("event=command_send_failed call_id=%s error=%v", callID, err)
		}
	})
	b.echoed++
}

func header(rec *kgo.Record, name string) string {
	for _, h := range rec.Headers {
		if h.Key == name {
			return string(h.Value)
		}
	}
	return ""
}

// accessOptions turns the access settings into client options: TLS with the CA file
// (or the system's CAs), SASL with the password from its file or the environment.
func accessOptions(protocol, mechanism, username, passwordFile, caFile string) ([]kgo.Opt, error) {
	var opts []kgo.Opt
	switch protocol {
	case "PLAINTEXT", "SASL_PLAINTEXT":
	case "SSL", "SASL_SSL":
		config := &tls.Config{MinVersion: tls.VersionTLS12}
		if caFile != "" {
			pem, err := os.ReadFile(caFile)
			if err != nil {
				return nil, err
			}
			config.RootCAs = x509.NewCertPool()
			if !config.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("no certificate in %s", caFile)
			}
		}
		opts = append(opts, kgo.DialTLSConfig(config))
	default:
		return nil, fmt.Errorf("unknown security protocol %q", protocol)
	}
	if !strings.HasPrefix(protocol, "SASL_") {
		return opts, nil
	}
	password := os.Getenv("KGW_KAFKA_SASL_PASSWORD")
	if passwordFile != "" {
		raw, err := os.ReadFile(passwordFile)
		if err != nil {
			return nil, err
		}
		password = strings.TrimSpace(string(raw))
	}
	if username == "" || password == "" {
		return nil, fmt.Errorf("SASL %s needs a user name and a password", mechanism)
	}
	switch mechanism {
	case "PLAIN":
		opts = append(opts, kgo.SASL(plain.Auth{User: username, Pass: password}.AsMechanism()))
	case "SCRAM-SHA-256":
		opts = append(opts, kgo.SASL(scram.Auth{User: username, Pass: password}.AsSha256Mechanism()))
	case "SCRAM-SHA-512":
		opts = append(opts, kgo.SASL(scram.Auth{User: username, Pass: password}.AsSha512Mechanism()))
	default:
		return nil, fmt.Errorf("SASL mechanism %q is not in this example", mechanism)
	}
	return opts, nil
}

func env(name, fallback string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return fallback
}

func envDuration(name string, fallback time.Duration) time.Duration {
	v, ok := os.LookupEnv(name)
	if !ok {
		return fallback
	}
	if d, err := time.ParseDuration(v); err == nil {
		return d
	}
	if s, err := strconv.ParseFloat(v, 64); err == nil { // plain seconds, like the SDK's
		return time.Duration(s * float64(time.Second))
	}
	log.Fatalf("bad value for KGW_BOT_MAX_BACKLOG: %q", v)
	return 0
}
