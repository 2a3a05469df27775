// encode_paragraphs: blank-line splitting, stripping and BOS/EOS framing, checked against
// ids built by hand from encode() of each expected paragraph.
#include <gtest/gtest.h>

#include "fixture_tokenizers.h"
#include "tokenizer/paragraph_stream.h"

namespace dsq::test {
namespace {

std::vector<int64_t> framed(const tokenizer::Tokenizer& tok, const std::vector<std::string>& paragraphs) {
  std::vector<int64_t> ids;
  for (const std::string& p : paragraphs) {
    ids.push_back(tok.bos_id());
    for (int32_t id : tok.encode(p)) ids.push_back(id);
    ids.push_back(tok.eos_id());
  }
  return ids;
}

TEST(ParagraphStream, SplitsOnBlankLinesAndStripsEachParagraph) {
  const tokenizer::Tokenizer& tok = tiny_brown_tokenizer();
  const std::string text = "  The jury said\nit did.  \n\n \t \r\nNo evidence\r\nwas found.\n\n\n  Last one";
  EXPECT_EQ(tokenizer::encode_paragraphs(tok, text),
            framed(tok, {"The jury said\nit did.", "No evidence\r\nwas found.", "Last one"}));
}

TEST(ParagraphStream, WhitespaceOnlyTextHasNoParagraphs) {
  EXPECT_TRUE(tokenizer::encode_paragraphs(tiny_brown_tokenizer(), " \n\n\t\r\n\f").empty());
  EXPECT_TRUE(tokenizer::encode_paragraphs(tiny_brown_tokenizer(), "").empty());
}

}  // namespace
}  // namespace dsq::test
