// Pretrained word vectors in the GloVe and word2vec text formats, and the
// embedding table they give a vocabulary.
//
//   GloVe:     one "word v1 v2 ... vd" line per word
//   word2vec:  a first line "count dim", then the same lines
//
// Fields are separated by spaces or tabs; lines end in \n or \r\n; a UTF-8
// byte-order mark at the start and whitespace-only lines are ignored.
// Values are parsed as doubles and rounded to f32 (as numpy.float32(float(s))
// does). Files are treated as hostile: any problem throws qkv::Error naming
// the file, the line and the problem (ragged rows, non-numeric or non-finite
// values, values beyond f32, a bad header, an empty file, over-long lines,
// words that are not UTF-8), and nothing is read past the limits below.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "qkv/tensor.h"

namespace qkv {

enum class TextVectorFormat {
  detect,    // word2vec when the first line is two non-negative integers, else GloVe
  glove,     // no header
  word2vec,  // "count dim" header
};

struct TextVectorsOptions {
  int64_t max_words = 0;     // keep the first max_words distinct words; 0 = all
  int64_t expected_dim = 0;  // the vectors' dimension must be this; 0 = any
  TextVectorFormat format = TextVectorFormat::detect;
  int64_t max_line_bytes = int64_t{1} << 20;  // a longer line is an error
};

struct TextVectors {
  std::vector<std::string> words;  // in file order, each once
  Tensor vectors;                  // [words.size(), dim] f32
  // Words seen again after their first line: the first vector is kept.
  int64_t duplicates = 0;
  TextVectorFormat format = TextVectorFormat::glove;  // the one read
  int64_t dim() const { return vectors.defined() ? vectors.size(1) : 0; }
};

TextVectors load_text_vectors(const std::string& path, const TextVectorsOptions& options = {});

// How embedding_table_for fills the rows of words without a vector.
struct MissingWordInit {
  enum class Kind { zeros, normal, uniform };
  Kind kind = Kind::normal;  // normal: N(0, scale^2), torch.nn.Embedding's default for scale 1
  double scale = 1.0;        // uniform: U(-scale, scale)
};

// [vocab.size(), dim] f32: row i is the vector of vocab[i], or drawn from
// `generator` (in vocabulary order, one row at a time) when the word has none.
Tensor embedding_table_for(const std::vector<std::string>& vocab, const TextVectors& vectors,
                           Generator& generator, const MissingWordInit& init = {});

}  // namespace qkv
