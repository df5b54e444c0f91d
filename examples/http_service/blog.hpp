#pragma once

// The blog's data: its schema (applied with fwd::migrate), its own SQLite writer
// functions, and the fwd procedures that name them. Every node compiles this header: a
// procedure is a name and a signature, and the primary runs the function behind it.
//
// The writer functions know nothing of fwd: they take the connection and write, as they
// would in a single-node service. fwd runs each one on the primary inside one
// transaction (a failure anywhere in it rolls all of it back), exactly once per call.

#include <sqlite3.h>

#include <cstdint>
#include <fwd/migrate.hpp>
#include <fwd/procedure.hpp>
#include <fwd/sqlite/connection.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace blog {

/// A post as a client submits it (also one row of a bulk import).
struct new_post {
  static constexpr std::string_view fwd_type_name = "blog.new_post";
  std::string title;
  std::string body;
  std::vector<std::string> tags;

  template <class Archive>
  void serialize(Archive& a, unsigned /*version*/) {
    a& title& body& tags;
  }
};

/// Creates a post and its tags: one transaction of several statements (the post, each
/// new tag, each link). Returns the post's id.
inline const fwd::procedure<std::int64_t(new_post)> create_post{"blog.create_post"};
/// Adds a comment to post `post_id`; fails (nothing written) if the post does not exist.
/// Returns the comment's id.
inline const fwd::procedure<std::int64_t(std::int64_t, std::string, std::string)> add_comment{
    "blog.add_comment"};
/// Imports many posts in one transaction: all of them or none. Returns how many.
inline const fwd::procedure<std::int64_t(std::vector<new_post>)> import_posts{"blog.import_posts"};

/// The schema, in order. Every node calls fwd::migrate with it at start; the primary
/// applies what its database lacks, once.
inline std::vector<fwd::migration> schema() {
  return {
      {1, "posts",
       "CREATE TABLE posts(id INTEGER PRIMARY KEY, title TEXT NOT NULL, body TEXT NOT NULL, "
       "created_on TEXT NOT NULL)"},
      {2, "tags",
       "CREATE TABLE tags(id INTEGER PRIMARY KEY, label TEXT NOT NULL UNIQUE); "
       "CREATE TABLE post_tags(post_id INTEGER NOT NULL REFERENCES posts(id), "
       "tag_id INTEGER NOT NULL REFERENCES tags(id), PRIMARY KEY(post_id, tag_id))"},
      {3, "comments",
       "CREATE TABLE comments(id INTEGER PRIMARY KEY, post_id INTEGER NOT NULL REFERENCES "
       "posts(id), author TEXT NOT NULL, body TEXT NOT NULL); "
       "CREATE INDEX comments_by_post ON comments(post_id)"},
  };
}

/// The service's writer functions. `node_name` only labels which node ran the write.
struct writers {
  std::string node_name;

  std::int64_t insert_post(fwd::sqlite::connection& db, const new_post& post) const {
    if (post.title.empty()) throw std::invalid_argument("a post needs a title");
    db.prepare("INSERT INTO posts(title, body, created_on) VALUES (?1, ?2, ?3)")
        .bind(1, post.title)
        .bind(2, post.body)
        .bind(3, node_name)
        .execute();
    const std::int64_t post_id = db.last_insert_rowid();
    for (const auto& label : post.tags) {
      if (label.empty()) throw std::invalid_argument("a tag cannot be empty");
      db.prepare("INSERT INTO tags(label) VALUES (?1) ON CONFLICT(label) DO NOTHING")
          .bind(1, label)
          .execute();
      db.prepare(
            "INSERT OR IGNORE INTO post_tags(post_id, tag_id) "
            "SELECT ?1, id FROM tags WHERE label = ?2")
          .bind(1, post_id)
          .bind(2, label)
          .execute();
    }
    return post_id;
  }

  std::int64_t insert_comment(fwd::sqlite::connection& db, std::int64_t post_id,
                              const std::string& author, const std::string& body) const {
    auto exists = db.prepare("SELECT 1 FROM posts WHERE id = ?1");
    if (!exists.bind(1, post_id).step())
      throw std::invalid_argument("no post " + std::to_string(post_id));
    db.prepare("INSERT INTO comments(post_id, author, body) VALUES (?1, ?2, ?3)")
        .bind(1, post_id)
        .bind(2, author)
        .bind(3, body)
        .execute();
    return db.last_insert_rowid();
  }

  std::int64_t import(fwd::sqlite::connection& db, const std::vector<new_post>& posts) const {
    for (const auto& post : posts) insert_post(db, post);
    return static_cast<std::int64_t>(posts.size());
  }
};

}  // namespace blog
