// End-to-end: the real pal-infer binary, as a new user runs it, on a tiny random model:
// one question, --json, --stream, --interactive, --manifest (resumed), bad input and exit
// codes; then `pal-infer serve` over loopback HTTP, bad requests included.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "../infer/infer_test_util.h"
#include "pal/core/atomic_file.h"
#include "pal/infer/chat_completions.h"

extern char** environ;

namespace pal {
namespace {

using nlohmann::json;

const std::string kPalInfer = PAL_INFER_EXE;

std::string quote(const std::filesystem::path& p) {
  return "'" + p.string() + "'";
}

std::string infer(const std::string& args) {
  return kPalInfer + " --model " + quote(test::tiny_model()) + " --threads 2 " + args;
}

TEST(E2EPalInfer, AnswersOneQuestion) {
  const std::string clip = quote(test::speech_clip());
  auto r =
      test::run_command(infer("--audio " + clip + " --question 'What is said?' --max-new-tokens 6 --json"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json j = json::parse(r.output);
  EXPECT_TRUE(j["answer"].is_string());
  EXPECT_GE(j["answer_tokens"].get<int>(), 1);
  EXPECT_LE(j["answer_tokens"].get<int>(), 6);
  EXPECT_GT(j["audio_tokens"].get<int>(), 0);
  EXPECT_NEAR(j["audio_seconds"].get<double>(), 0.96, 0.01);

  // Plain and streamed output print the same answer.
  auto plain = test::run_command(infer("--audio " + clip + " --question 'What is said?' --max-new-tokens 6"));
  auto streamed =
      test::run_command(infer("--audio " + clip + " --question 'What is said?' --max-new-tokens 6 --stream"));
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  ASSERT_EQ(streamed.exit_code, 0) << streamed.output;
  EXPECT_EQ(plain.output, j["answer"].get<std::string>() + "\n");
  EXPECT_EQ(streamed.output, plain.output);

  // Seeded sampling repeats itself.
  const std::string sampled =
      infer("--audio " + clip + " --question 'Describe it.' --sample --temperature 1.3 " +
            "--top-k 50 --seed 4 --max-new-tokens 8");
  auto s1 = test::run_command(sampled), s2 = test::run_command(sampled);
  ASSERT_EQ(s1.exit_code, 0) << s1.output;
  EXPECT_EQ(s1.output, s2.output);
}

TEST(E2EPalInfer, InteractiveAnswersEveryLineAboutOneClip) {
  test::TempDir dir;
  test::write_bytes(dir / "questions.txt", "What is said?\n\nWho is speaking?\n");
  auto r =
      test::run_command(infer("--audio " + quote(test::speech_clip()) +
                              " --interactive --json --max-new-tokens 5 < " + quote(dir / "questions.txt")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("Ask questions, one a line"), std::string::npos) << r.output;
  std::vector<json> answers;
  std::istringstream lines(r.output);
  for (std::string line; std::getline(lines, line);)
    if (!line.empty() && line[0] == '{') answers.push_back(json::parse(line));
  ASSERT_EQ(answers.size(), 2u) << r.output;
  auto single = test::run_command(infer("--audio " + quote(test::speech_clip()) +
                                        " --question 'Who is speaking?' --json --max-new-tokens 5"));
  EXPECT_EQ(json::parse(single.output)["answer"], answers[1]["answer"]);
}

TEST(E2EPalInfer, ManifestIsBatchedAndResumable) {
  test::TempDir dir;
  test::write_clip(dir / "a.wav", 1.0, 300);
  test::write_clip(dir / "b.wav", 2.0, 800);
  test::write_bytes(dir / "in.jsonl", R"({"audio": "a.wav", "question": "What is it?"})"
                                      "\n"
                                      R"({"audio": "b.wav", "question": "What is it?"})"
                                      "\n"
                                      R"({"audio": "a.wav", "question": "How loud?"})"
                                      "\n");
  const std::string cmd = infer("--manifest " + quote(dir / "in.jsonl") + " --output " +
                                quote(dir / "out.jsonl") + " --batch-size 2 --max-new-tokens 4");
  auto r = test::run_command(cmd);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("3/3 answered (0 from an earlier run, 0 failed)"), std::string::npos) << r.output;
  const std::string first = read_file(dir / "out.jsonl");
  r = test::run_command(cmd);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("3/3 answered (3 from an earlier run, 0 failed)"), std::string::npos) << r.output;
  EXPECT_EQ(read_file(dir / "out.jsonl"), first);  // nothing answered twice

  // A line whose audio is missing: the others are answered, exit code 3.
  test::write_bytes(dir / "in.jsonl", R"({"audio": "gone.wav", "question": "What?"})"
                                      "\n");
  r = test::run_command(
      infer("--manifest " + quote(dir / "in.jsonl") + " --output " + quote(dir / "out2.jsonl")));
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("1 lines failed"), std::string::npos) << r.output;
  EXPECT_NE(read_file(dir / "out2.jsonl").find("gone.wav"), std::string::npos);
}

TEST(E2EPalInfer, BadInputExitsWithOneAndNamesIt) {
  test::TempDir dir;
  auto r = test::run_command(infer("--audio " + quote(dir / "nope.wav") + " --question 'What?'"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("pal-infer: error: "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("nope.wav"), std::string::npos) << r.output;

  test::write_bytes(dir / "notes.wav", "just some text, not audio");
  r = test::run_command(infer("--audio " + quote(dir / "notes.wav") + " --question 'What?'"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("notes.wav"), std::string::npos) << r.output;

  r = test::run_command(infer("--audio " + quote(test::speech_clip()) + " --question '  '"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("the question is empty"), std::string::npos) << r.output;

  // A model folder that lacks its weights.
  std::filesystem::create_directories(dir / "model");
  std::filesystem::copy_file(test::tiny_model() / "model.yaml", dir / "model" / "model.yaml");
  r = test::run_command(kPalInfer + " --model " + quote(dir / "model") + " --audio " +
                        quote(test::speech_clip()) + " --question 'What?'");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("no model.safetensors"), std::string::npos) << r.output;

  // Usage errors: exit 2.
  const std::string clip = quote(test::speech_clip());
  for (const std::string& args : std::vector<std::string>{
           "--audio " + clip,                                      // no question
           "--question 'What?'",                                   // no audio
           "--audio " + clip + " --question q --temperature 0.5",  // needs --sample
           "--audio " + clip + " --question q --device tpu", "--manifest x.jsonl", "--no-such-flag"}) {
    SCOPED_TRACE(args);
    r = test::run_command(infer(args));
    EXPECT_EQ(r.exit_code, 2) << r.output;
  }
}

// ---- the server ----------------------------------------------------------------------------

// `pal-infer serve` in a child process; the port comes from its first line of output.
class ServerProcess {
 public:
  explicit ServerProcess(const std::vector<std::string>& extra) {
    std::vector<std::string> args = {kPalInfer,       "serve", "--model",      test::tiny_model().string(),
                                     "--threads",     "2",     "--port",       "0",
                                     "--max-body-mb", "1",     "--max-tokens", "64"};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    int out[2];
    if (pipe(out) != 0) throw std::runtime_error("pipe");
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&actions, out[0]);
    if (posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ) != 0)
      throw std::runtime_error("cannot start " + kPalInfer);
    posix_spawn_file_actions_destroy(&actions);
    close(out[1]);
    out_ = fdopen(out[0], "r");
    char line[512] = {0};
    if (!fgets(line, sizeof line, out_)) throw std::runtime_error("pal-infer serve printed nothing");
    first_line_ = line;
    const size_t colon = first_line_.rfind(':', first_line_.find(" (POST"));
    port_ = std::stoi(first_line_.substr(colon + 1));
  }
  ~ServerProcess() { stop(); }

  // SIGTERM; the exit status.
  int stop() {
    if (pid_ <= 0) return status_;
    kill(pid_, SIGTERM);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    if (out_) fclose(out_);
    out_ = nullptr;
    status_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return status_;
  }
  int port() const { return port_; }
  const std::string& first_line() const { return first_line_; }

 private:
  pid_t pid_ = -1;
  FILE* out_ = nullptr;
  int port_ = 0, status_ = -1;
  std::string first_line_;
};

// Sends raw bytes to the server and reads until it closes (or `stop_after` is seen).
std::string raw_exchange(int port, const std::string& request, const std::string& stop_after = {}) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval timeout{20, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return "connect failed";
  }
  send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string response;
  char buf[4096];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof buf, 0)) > 0) {
    response.append(buf, static_cast<size_t>(n));
    if (!stop_after.empty() && response.find(stop_after) != std::string::npos) break;
  }
  close(fd);
  return response;
}

std::string http_post(const std::string& body, const std::string& content_type = "application/json") {
  return "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: " +
         content_type + "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

json chat_body(const std::string& audio_bytes, const std::string& question, int max_tokens,
               bool stream = false) {
  json content = json::array({{{"type", "text"}, {"text", question}}});
  if (!audio_bytes.empty())
    content.push_back({{"type", "input_audio"},
                       {"input_audio", {{"data", infer::encode_base64(audio_bytes)}, {"format", "wav"}}}});
  return {{"model", "pal"},
          {"messages", {{{"role", "user"}, {"content", content}}}},
          {"max_tokens", max_tokens},
          {"stream", stream}};
}

// The "data: " payloads of a server-sent event stream.
std::vector<std::string> sse_data(const std::string& response) {
  std::vector<std::string> out;
  std::istringstream lines(response);
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.rfind("data: ", 0) == 0) out.push_back(line.substr(6));
  }
  return out;
}

TEST(E2EPalInferServe, AnswersChatCompletionsPlainAndStreamed) {
  ServerProcess server({"--batch-wait-ms", "50"});
  EXPECT_NE(server.first_line().find("on http://127.0.0.1:"), std::string::npos) << server.first_line();
  httplib::Client client("127.0.0.1", server.port());
  client.set_read_timeout(60, 0);
  auto health = client.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(json::parse(health->body)["status"], "ok");

  const std::string wav = read_file(test::speech_clip());
  auto res =
      client.Post("/v1/chat/completions", chat_body(wav, "What is said?", 6).dump(), "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(res->get_header_value("Content-Type"), "application/json");
  const json j = json::parse(res->body);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["model"], "pal");
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  const std::string content = j["choices"][0]["message"]["content"];
  EXPECT_TRUE(j["choices"][0]["finish_reason"] == "stop" || j["choices"][0]["finish_reason"] == "length");
  EXPECT_LE(j["usage"]["completion_tokens"].get<int>(), 6);
  EXPECT_GT(j["usage"]["prompt_tokens_details"]["audio_tokens"].get<int>(), 0);
  // The CLI gives the same answer to the same question.
  auto cli = test::run_command(infer("--audio " + quote(test::speech_clip()) +
                                     " --question 'What is said?' --max-new-tokens 6 --json"));
  EXPECT_EQ(json::parse(cli.output)["answer"], content);

  // Streamed: a role chunk, content pieces that add up to the same text, a finish chunk,
  // [DONE].
  const std::string response =
      raw_exchange(server.port(), http_post(chat_body(wav, "What is said?", 6, true).dump()));
  EXPECT_NE(response.find("Content-Type: text/event-stream"), std::string::npos) << response;
  std::vector<std::string> events = sse_data(response);
  ASSERT_GE(events.size(), 3u) << response;
  EXPECT_EQ(events.back(), "[DONE]");
  EXPECT_EQ(json::parse(events[0])["choices"][0]["delta"]["role"], "assistant");
  std::string joined;
  for (size_t i = 1; i + 2 < events.size(); ++i) {
    const json chunk = json::parse(events[i]);
    EXPECT_EQ(chunk["object"], "chat.completion.chunk");
    joined += chunk["choices"][0]["delta"]["content"].get<std::string>();
  }
  EXPECT_EQ(joined, content);
  EXPECT_EQ(json::parse(events[events.size() - 2])["choices"][0]["finish_reason"],
            j["choices"][0]["finish_reason"]);

  // Concurrent clients are answered, and batched.
  std::vector<int> statuses(4, 0);
  std::vector<std::string> answers(4);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < 4; ++i)
    threads.emplace_back([&, i] {
      httplib::Client c("127.0.0.1", server.port());
      c.set_read_timeout(60, 0);
      auto r = c.Post("/v1/chat/completions", chat_body(wav, "What is said?", 6).dump(), "application/json");
      if (!r) return;
      statuses[i] = r->status;
      answers[i] = json::parse(r->body)["choices"][0]["message"]["content"];
    });
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(statuses[i], 200);
    EXPECT_EQ(answers[i], content);  // greedy, batched or not
  }
  health = client.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_GE(json::parse(health->body)["largest_batch"].get<int>(), 2) << health->body;
  EXPECT_EQ(server.stop(), 0);
}

TEST(E2EPalInferServe, BadRequestsGetJsonErrorsAndTheServerKeepsServing) {
  ServerProcess server({});
  const int port = server.port();
  const std::string wav = read_file(test::speech_clip());
  struct Case {
    std::string name, request;
    int status;
    std::string message;
  };
  json missing = chat_body(wav, "What?", 4);
  missing["messages"][0].erase("content");
  json bad_base64 = chat_body(wav, "What?", 4);
  bad_base64["messages"][0]["content"][1]["input_audio"]["data"] = "UklGR*%%";
  const std::vector<Case> cases = {
      {"malformed JSON", http_post("{\"messages\": [}"), 400, "not valid JSON"},
      {"wrong content type", http_post(chat_body(wav, "What?", 4).dump(), "text/plain"), 415,
       "Content-Type must be application/json"},
      {"body over the limit", http_post(std::string(3u << 19, ' ')), 413, "over the limit of 1048576 bytes"},
      {"missing field", http_post(missing.dump()), 400, "messages[0].content: missing"},
      {"invalid base64", http_post(bad_base64.dump()), 400, "invalid base64"},
      {"not audio", http_post(chat_body("%PDF-1.4 this is a document", "What?", 4).dump()), 400,
       "not a format libsndfile reads"},
      {"too many tokens", http_post(chat_body(wav, "What?", 100000).dump()), 400, "max_tokens"},
      {"unknown path", "GET /v2/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404,
       "no such endpoint"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string response = raw_exchange(port, c.request);
    ASSERT_EQ(response.rfind("HTTP/1.1 " + std::to_string(c.status), 0), 0u) << response.substr(0, 300);
    const std::string body = response.substr(response.find("\r\n\r\n") + 4);
    const json j = json::parse(body);
    EXPECT_NE(j["error"]["message"].get<std::string>().find(c.message), std::string::npos) << body;
    EXPECT_TRUE(j["error"].contains("type"));
  }
  // A client that goes away mid-stream: its generation stops, the server carries on.
  const std::string partial =
      raw_exchange(port, http_post(chat_body(wav, "Tell me everything.", 64, true).dump()), "\"content\"");
  EXPECT_NE(partial.find("data: "), std::string::npos);
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(60, 0);
  for (int i = 0; i < 2; ++i) {
    auto health = client.Get("/health");
    ASSERT_TRUE(health);
    EXPECT_EQ(health->status, 200);
    auto res =
        client.Post("/v1/chat/completions", chat_body(wav, "What is said?", 4).dump(), "application/json");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200) << res->body;
  }
  EXPECT_EQ(server.stop(), 0);
}

}  // namespace
}  // namespace pal
